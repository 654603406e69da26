// Package mariadbtest gives tests the MariaDB server that scripts/test starts:
// its address, an admin account, the CA its certificate chains to, and
// helpers to open connections, create users and rotate their passwords.
//
// The server is described by environment variables, which scripts/test
// exports:
//
//	RDSCONN_MARIADB_ADDR            host:port of the server, e.g. 127.0.0.1:41234
//	RDSCONN_MARIADB_ADMIN_USER      an account with all privileges and GRANT OPTION
//	RDSCONN_MARIADB_ADMIN_PASSWORD  its password
//	RDSCONN_MARIADB_CA              PEM file of the CA the server certificate chains to
//	RDSCONN_MARIADB_OTHER_CA        PEM file of an unrelated CA (optional)
//
// Without RDSCONN_MARIADB_OTHER_CA, [Info.OtherRootCAs] is an empty pool,
// which fails the handshake with the same unknown-authority error.
//
// Without RDSCONN_MARIADB_ADDR, [Server] skips the test and says how to run it.
//
// # RDS names over loopback
//
// The server certificate made by scripts/test names localhost, 127.0.0.1 and
// RDS-looking endpoints: db1.abc123.us-east-1.rds.amazonaws.com,
// *.abc123.us-east-1.rds.amazonaws.com and
// app.cluster-abc123.us-east-1.rds.amazonaws.com. [Info.DialFunc] sends every
// connection to the server whatever host it names, so a test can connect to
// such an endpoint and have its name checked against the certificate exactly
// as against RDS.
package mariadbtest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

// Environment variables that describe the server.
const (
	EnvAddr          = "RDSCONN_MARIADB_ADDR"
	EnvAdminUser     = "RDSCONN_MARIADB_ADMIN_USER"
	EnvAdminPassword = "RDSCONN_MARIADB_ADMIN_PASSWORD"
	EnvCA            = "RDSCONN_MARIADB_CA"
	EnvOtherCA       = "RDSCONN_MARIADB_OTHER_CA"
)

// SkipMessage is the reason a test is skipped when no server is configured.
const SkipMessage = "MariaDB not configured: run scripts/test (it installs and starts a " +
	"throwaway MariaDB) or set " + EnvAddr + ", " + EnvAdminUser + ", " +
	EnvAdminPassword + " and " + EnvCA + " (see TESTING.md)"

// Database is the database that scripts/test creates for tests to use.
const Database = "shop"

// RDSEndpoint is an RDS instance endpoint that the test server's certificate
// names; dial it through [Info.DialFunc].
const RDSEndpoint = "db1.abc123.us-east-1.rds.amazonaws.com:3306"

// Info describes the test server. Its fields are read-only.
type Info struct {
	// Addr is the host:port the server listens on.
	Addr string
	// AdminUser and AdminPassword are an account with all privileges,
	// including GRANT OPTION.
	AdminUser     string
	AdminPassword string
	// RootCAs holds the CA that the server certificate chains to.
	RootCAs *x509.CertPool
	// OtherRootCAs holds a CA unrelated to the server certificate: a client
	// trusting only it must fail the TLS handshake.
	OtherRootCAs *x509.CertPool
	// CAFile is the PEM file that RootCAs was read from.
	CAFile string
}

// Server returns the test server described by the environment. It skips t
// with [SkipMessage] when RDSCONN_MARIADB_ADDR is unset, and fails t when the
// other variables are missing or a CA file cannot be read.
func Server(t testing.TB) *Info {
	t.Helper()

	addr := os.Getenv(EnvAddr)
	if addr == "" {
		t.Skip(SkipMessage)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		t.Fatalf("mariadbtest: %s=%q is not host:port: %v", EnvAddr, addr, err)
	}
	user := os.Getenv(EnvAdminUser)
	password, hasPassword := os.LookupEnv(EnvAdminPassword)
	caFile := os.Getenv(EnvCA)
	if user == "" || !hasPassword || caFile == "" {
		t.Fatalf("mariadbtest: %s is set, so %s, %s and %s must be set too",
			EnvAddr, EnvAdminUser, EnvAdminPassword, EnvCA)
	}

	info := &Info{
		Addr:          addr,
		AdminUser:     user,
		AdminPassword: password,
		RootCAs:       readPool(t, EnvCA, caFile),
		CAFile:        caFile,
	}
	if file := os.Getenv(EnvOtherCA); file != "" {
		info.OtherRootCAs = readPool(t, EnvOtherCA, file)
	} else {
		// A pool that trusts nothing fails the handshake the same way.
		info.OtherRootCAs = x509.NewCertPool()
	}
	return info
}

func readPool(t testing.TB, name, file string) *x509.CertPool {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("mariadbtest: reading %s: %v", name, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		t.Fatalf("mariadbtest: %s=%s holds no PEM certificate", name, file)
	}
	return pool
}

// DialFunc returns a dial function for [mysql.Config.DialFunc] that connects
// to the test server whatever address it is asked for, so that a config can
// name an RDS endpoint and still reach the server over loopback.
func (s *Info) DialFunc() func(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, network, _ string) (net.Conn, error) {
		if !strings.HasPrefix(network, "tcp") {
			network = "tcp"
		}
		return d.DialContext(ctx, network, s.Addr)
	}
}

// TLSConfig returns a TLS config that trusts only the test CA and checks the
// server certificate against serverName, which may be a host or host:port.
func (s *Info) TLSConfig(serverName string) *tls.Config {
	if host, _, err := net.SplitHostPort(serverName); err == nil {
		serverName = host
	}
	return &tls.Config{
		RootCAs:    s.RootCAs,
		ServerName: serverName,
		MinVersion: tls.VersionTLS12,
	}
}

// Config returns a go-sql-driver config for user and password that connects
// to addr, such as [RDSEndpoint], through [Info.DialFunc] over TLS verified
// against the test CA and the host of addr. Its database is [Database].
func (s *Info) Config(addr, user, password string) *mysql.Config {
	cfg := mysql.NewConfig()
	cfg.Net = "tcp"
	cfg.Addr = addr
	cfg.User = user
	cfg.Passwd = password
	cfg.DBName = Database
	cfg.TLS = s.TLSConfig(addr)
	cfg.DialFunc = s.DialFunc()
	cfg.Timeout = 10 * time.Second
	return cfg
}

// OpenDB opens a pool for cfg, pings it and closes it when t ends.
func OpenDB(t testing.TB, cfg *mysql.Config) *sql.DB {
	t.Helper()
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		t.Fatalf("mariadbtest: %v", err)
	}
	db := sql.OpenDB(connector)
	t.Cleanup(func() { db.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("mariadbtest: connecting to %s as %s: %v", cfg.Addr, cfg.User, err)
	}
	return db
}

// AdminDB opens a pool logged in as the admin account, over TLS to the
// server's own address verified against the test CA, and closes it when t
// ends. Its queries may use ? placeholders in any statement, CREATE USER
// included: the driver interpolates them.
func (s *Info) AdminDB(t testing.TB) *sql.DB {
	t.Helper()
	return OpenDB(t, s.adminConfig())
}

func (s *Info) adminConfig() *mysql.Config {
	cfg := s.Config(s.Addr, s.AdminUser, s.AdminPassword)
	cfg.DialFunc = nil
	cfg.InterpolateParams = true
	return cfg
}

// CreateUser creates a user, unique to this call, whose name starts with
// name, with password and all privileges on [Database], and returns the
// user's name. The user may log in from any host and is dropped when t ends.
func (s *Info) CreateUser(t testing.TB, name, password string) string {
	t.Helper()

	// Tests of different packages share the server and run at once; MySQL
	// allows 32 characters in a user name.
	const maxPrefix = 32 - 1 - 8
	if len(name) > maxPrefix {
		name = name[:maxPrefix]
	}
	var suffix [4]byte
	rand.Read(suffix[:])
	user := name + "_" + hex.EncodeToString(suffix[:])

	s.admin(t, "CREATE USER ?@'%' IDENTIFIED BY ?", user, password)
	t.Cleanup(func() { s.admin(t, "DROP USER IF EXISTS ?@'%'", user) })
	s.admin(t, "GRANT ALL PRIVILEGES ON "+Database+".* TO ?@'%'", user)
	return user
}

// SetPassword changes the password of user, as a secret rotation would.
// Connections already open stay open.
func (s *Info) SetPassword(t testing.TB, user, password string) {
	t.Helper()
	s.admin(t, "ALTER USER ?@'%' IDENTIFIED BY ?", user, password)
}

// admin runs one statement as the admin account on a connection of its own,
// so that it works in t.Cleanup after the test's pools are closed.
func (s *Info) admin(t testing.TB, query string, args ...any) {
	t.Helper()
	connector, err := mysql.NewConnector(s.adminConfig())
	if err != nil {
		t.Fatalf("mariadbtest: %v", err)
	}
	db := sql.OpenDB(connector)
	defer db.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, query, args...); err != nil {
		t.Fatalf("mariadbtest: %s: %v", strings.Fields(query)[0], err)
	}
}
