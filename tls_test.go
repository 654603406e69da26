package rdsconn

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// embeddedCerts parses every certificate in certs/.
func embeddedCerts(t *testing.T) []*x509.Certificate {
	t.Helper()
	entries, err := certFiles.ReadDir("certs")
	if err != nil {
		t.Fatal(err)
	}
	var certs []*x509.Certificate
	for _, e := range entries {
		rest, _ := certFiles.ReadFile("certs/" + e.Name())
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatalf("%s: %v", e.Name(), err)
			}
			certs = append(certs, c)
		}
	}
	return certs
}

// TestEmbeddedRootsValid covers K13: every embedded certificate is valid
// today and for at least two more years, so an expiring CA fails CI long
// before it fails users.
func TestEmbeddedRootsValid(t *testing.T) {
	certs := embeddedCerts(t)
	if len(certs) < 90 {
		t.Fatalf("only %d embedded certificates, want the RDS bundle and the Amazon roots", len(certs))
	}
	now := time.Now()
	for _, c := range certs {
		if now.Before(c.NotBefore) {
			t.Errorf("%s is not valid before %s", c.Subject, c.NotBefore)
		}
		if c.NotAfter.Before(now.AddDate(2, 0, 0)) {
			t.Errorf("%s expires on %s, within two years: refresh certs/ (see certs/SOURCE.md)",
				c.Subject, c.NotAfter.Format(time.DateOnly))
		}
		if !c.IsCA {
			t.Errorf("%s is not a CA certificate", c.Subject)
		}
	}
}

// TestEmbeddedRootsSubjects covers K15: RDS Proxy certificates chain to the
// Amazon roots, which must be in the pool, and the RDS G1 roots are there.
func TestEmbeddedRootsSubjects(t *testing.T) {
	have := map[string]bool{}
	for _, c := range embeddedCerts(t) {
		have[c.Subject.String()] = true
	}
	want := []string{
		"CN=Amazon Root CA 1,O=Amazon,C=US",
		"CN=Amazon Root CA 2,O=Amazon,C=US",
		"CN=Amazon Root CA 3,O=Amazon,C=US",
		"CN=Amazon Root CA 4,O=Amazon,C=US",
		"CN=Starfield Services Root Certificate Authority - G2," +
			"O=Starfield Technologies\\, Inc.,L=Scottsdale,ST=Arizona,C=US",
	}
	for _, region := range []string{"us-east-1", "eu-west-1", "ap-southeast-2"} {
		for _, kind := range []string{"RSA2048", "RSA4096", "ECC384"} {
			want = append(want, fmt.Sprintf("CN=Amazon RDS %s Root CA %s G1", region, kind))
		}
	}
	for _, w := range want {
		found := have[w]
		if !found && strings.HasPrefix(w, "CN=Amazon RDS") {
			for s := range have {
				if strings.HasPrefix(s, w+",") {
					found = true
				}
			}
		}
		if !found {
			t.Errorf("no embedded root with subject %q", w)
		}
	}
}

func TestRootCAsIsACopy(t *testing.T) {
	p := RootCAs()
	p.AddCert(&x509.Certificate{Raw: []byte("x"), RawSubject: []byte("y")})
	if RootCAs().Equal(p) {
		t.Fatal("adding to the returned pool changed the embedded roots")
	}
}

func TestExplainUnknownCA(t *testing.T) {
	cause := fmt.Errorf("tls: %w", x509.UnknownAuthorityError{})
	err := explainUnknownCA(cause, rdsHost)
	var ua x509.UnknownAuthorityError
	if !errors.Is(err, ErrUnknownCA) || !errors.As(err, &ua) {
		t.Fatalf("err %v does not match ErrUnknownCA and the x509 error", err)
	}
	for _, want := range []string{rdsHost, "ca-west-1", "GovCloud", "China", "WithRootCAs"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	other := errors.New("connection refused")
	if explainUnknownCA(other, rdsHost) != other {
		t.Fatal("an unrelated error was rewritten")
	}
}
