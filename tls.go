package rdsconn

import (
	"crypto/tls"
	"crypto/x509"
	"embed"
	"errors"
	"fmt"
	"sync"
)

// The embedded roots: the Amazon RDS CA bundle (instances and clusters) and
// the Amazon root CAs (RDS Proxy presents ACM public certificates). Expired
// certificates are left out; see certs/SOURCE.md.
//
//go:embed certs/*.pem
var certFiles embed.FS

// missingFromBundle names what the embedded bundle cannot verify, for the
// unknown-authority error.
const missingFromBundle = "ca-west-1, il-central-1, mx-central-1, ap-southeast-5, " +
	"ap-southeast-7, ap-east-2 and newer regions, AWS GovCloud (US) and the China regions"

// sessionCacheSize is how many TLS sessions each auto-TLS config remembers.
const sessionCacheSize = 64

var embeddedRoots = sync.OnceValue(func() *x509.CertPool {
	pool := x509.NewCertPool()
	entries, err := certFiles.ReadDir("certs")
	if err != nil {
		panic("rdsconn: embedded certificates missing: " + err.Error())
	}
	for _, e := range entries {
		pem, err := certFiles.ReadFile("certs/" + e.Name())
		if err != nil || !pool.AppendCertsFromPEM(pem) {
			panic("rdsconn: embedded certificate file " + e.Name() + " is unreadable")
		}
	}
	return pool
})

// RootCAs returns a new pool holding the embedded Amazon RDS root
// certificates and the Amazon root CAs that RDS Proxy certificates chain to.
// Callers may add to the returned pool.
func RootCAs() *x509.CertPool {
	return embeddedRoots().Clone()
}

// autoTLSConfig returns the TLS config rdsconn uses for an RDS endpoint
// name: verified against roots, for serverName, TLS 1.2 at least, with a
// session cache of its own so that new connections to the same endpoint can
// resume a session. The cache belongs to this config alone, and Go keys it
// by server name, so no session crosses endpoints.
func autoTLSConfig(serverName string, roots *x509.CertPool) *tls.Config {
	return &tls.Config{
		RootCAs:            roots,
		ServerName:         serverName,
		MinVersion:         tls.VersionTLS12,
		ClientSessionCache: tls.NewLRUClientSessionCache(sessionCacheSize),
	}
}

// explainUnknownCA adds what to do to an unknown-authority error met while
// verifying an RDS server against the embedded roots.
func explainUnknownCA(err error, host string) error {
	var ua x509.UnknownAuthorityError
	if !errors.As(err, &ua) {
		return err
	}
	return fmt.Errorf("%w: the certificate of %s is not signed by any of the embedded roots, "+
		"which lack %s; pass your region's bundle from "+
		"https://truststore.pki.rds.amazonaws.com with WithRootCAs (or a registered tls= "+
		"config in the DSN): %w", ErrUnknownCA, host, missingFromBundle, err)
}
