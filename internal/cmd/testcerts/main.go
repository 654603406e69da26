// Command testcerts writes a throwaway certificate authority and a server
// certificate for the test MariaDB that scripts/test starts.
//
// Usage:
//
//	go run ./internal/cmd/testcerts -dir DIR [-key ecdsa|rsa]
//
// It writes, in DIR:
//
//   - ca.pem: the CA that signed the server certificate, for clients to trust;
//   - server-cert.pem and server-key.pem: the server's certificate and its
//     PKCS #8 private key, for mariadbd's --ssl-cert and --ssl-key;
//   - other-ca.pem: an unrelated CA, for tests that expect "unknown authority".
//
// The server certificate names loopback and RDS-looking endpoints, so that a
// test can dial an RDS name through loopback and have the name checked as
// against RDS.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/rdsconn/rdsconn/rdstest"
)

// serverNames are the names the server certificate is valid for: loopback,
// an RDS instance endpoint, a wildcard for the instance's account and region,
// and an Aurora cluster endpoint.
var serverNames = []string{
	"localhost",
	"127.0.0.1",
	"db1.abc123.us-east-1.rds.amazonaws.com",
	"*.abc123.us-east-1.rds.amazonaws.com",
	"app.cluster-abc123.us-east-1.rds.amazonaws.com",
}

func main() {
	dir := flag.String("dir", "", "directory to write the PEM files to (must exist)")
	key := flag.String("key", "ecdsa", "server key type: ecdsa (P-256) or rsa (2048 bits)")
	flag.Parse()
	if *dir == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: testcerts -dir DIR [-key ecdsa|rsa]")
		os.Exit(2)
	}

	if err := run(*dir, *key); err != nil {
		fmt.Fprintln(os.Stderr, "testcerts:", err)
		os.Exit(1)
	}
}

func run(dir, key string) error {
	var keyType rdstest.KeyType
	switch key {
	case "ecdsa":
		keyType = rdstest.ECDSAP256
	case "rsa":
		keyType = rdstest.RSA2048
	default:
		return fmt.Errorf("unknown key type %q: want ecdsa or rsa", key)
	}

	ca, err := rdstest.NewCA("rdsconn test CA")
	if err != nil {
		return err
	}
	cert, err := ca.ServerCert(keyType, serverNames...)
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := rdstest.PEM(cert)
	if err != nil {
		return err
	}

	// A second CA that signed nothing here: a client trusting only it must
	// reject the server, as a client with the wrong RDS bundle would.
	other, err := rdstest.NewCA("rdsconn unrelated test CA")
	if err != nil {
		return err
	}

	files := []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{"ca.pem", ca.CertPEM(), 0o644},
		{"server-cert.pem", certPEM, 0o644},
		{"server-key.pem", keyPEM, 0o600},
		{"other-ca.pem", other.CertPEM(), 0o644},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			return err
		}
	}
	return nil
}
