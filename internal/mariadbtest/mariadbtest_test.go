package mariadbtest_test

import (
	"context"
	"crypto/x509"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/rdsconn/rdsconn/internal/mariadbtest"
)

func TestTLSToRDSNames(t *testing.T) {
	srv := mariadbtest.Server(t)

	tests := []struct {
		name string
		addr string
	}{
		{"instance endpoint", mariadbtest.RDSEndpoint},
		{"wildcard for the account and region", "db2.abc123.us-east-1.rds.amazonaws.com:3306"},
		{"cluster endpoint", "app.cluster-abc123.us-east-1.rds.amazonaws.com:3306"},
		{"localhost", "localhost:3306"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := srv.Config(tt.addr, srv.AdminUser, srv.AdminPassword)
			db := mariadbtest.OpenDB(t, cfg)

			var one int
			if err := db.QueryRow("SELECT 1").Scan(&one); err != nil || one != 1 {
				t.Fatalf("SELECT 1 = %d, %v; want 1, nil", one, err)
			}
			var name, version string
			err := db.QueryRow("SHOW STATUS LIKE 'Ssl_version'").Scan(&name, &version)
			if err != nil {
				t.Fatal(err)
			}
			if version != "TLSv1.2" && version != "TLSv1.3" {
				t.Errorf("Ssl_version = %q, want TLSv1.2 or TLSv1.3", version)
			}
		})
	}
}

func TestTLSRejectsServer(t *testing.T) {
	srv := mariadbtest.Server(t)

	tests := []struct {
		name    string
		addr    string
		trustCA *x509.CertPool
		want    any // a pointer to the error type expected in the chain
	}{
		{
			name:    "unknown CA",
			addr:    mariadbtest.RDSEndpoint,
			trustCA: srv.OtherRootCAs,
			want:    new(x509.UnknownAuthorityError),
		},
		{
			name:    "endpoint of another account",
			addr:    "db1.xyz789.us-east-1.rds.amazonaws.com:3306",
			trustCA: srv.RootCAs,
			want:    new(x509.HostnameError),
		},
		{
			name:    "endpoint in another region",
			addr:    "db1.abc123.eu-west-1.rds.amazonaws.com:3306",
			trustCA: srv.RootCAs,
			want:    new(x509.HostnameError),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := srv.Config(tt.addr, srv.AdminUser, srv.AdminPassword)
			cfg.TLS.RootCAs = tt.trustCA
			err := ping(cfg)
			if err == nil {
				t.Fatal("connected; want a certificate error")
			}
			if !errors.As(err, tt.want) {
				t.Fatalf("error = %v (%T); want a %T in its chain", err, err, tt.want)
			}
		})
	}
}

func TestCreateUserAndSetPassword(t *testing.T) {
	srv := mariadbtest.Server(t)

	user := srv.CreateUser(t, "app", "first-password")
	if !strings.HasPrefix(user, "app_") {
		t.Errorf("CreateUser returned %q, want a name starting with app_", user)
	}
	db := mariadbtest.OpenDB(t, srv.Config(mariadbtest.RDSEndpoint, user, "first-password"))
	var current, database string
	if err := db.QueryRow("SELECT CURRENT_USER(), DATABASE()").Scan(&current, &database); err != nil {
		t.Fatal(err)
	}
	if current != user+"@%" || database != mariadbtest.Database {
		t.Errorf("logged in as %s to %s; want %s@%% to %s", current, database, user,
			mariadbtest.Database)
	}

	srv.SetPassword(t, user, "second-password")

	err := ping(srv.Config(mariadbtest.RDSEndpoint, user, "first-password"))
	var mysqlErr *mysql.MySQLError
	if !errors.As(err, &mysqlErr) || mysqlErr.Number != 1045 {
		t.Errorf("old password after SetPassword: error = %v; want MySQL error 1045", err)
	}
	if err := ping(srv.Config(mariadbtest.RDSEndpoint, user, "second-password")); err != nil {
		t.Errorf("new password after SetPassword: %v", err)
	}
}

func TestCreateUserNamesAreUnique(t *testing.T) {
	srv := mariadbtest.Server(t)

	long := strings.Repeat("x", 40)
	a := srv.CreateUser(t, long, "pw")
	b := srv.CreateUser(t, long, "pw")
	if a == b {
		t.Errorf("two CreateUser calls both returned %q", a)
	}
	if len(a) > 32 {
		t.Errorf("CreateUser returned %q, %d characters; MySQL allows 32", a, len(a))
	}
}

func TestServerSkipsWithoutEnvironment(t *testing.T) {
	t.Setenv(mariadbtest.EnvAddr, "")

	tb := &recordingTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		mariadbtest.Server(tb)
		tb.returned = true
	}()
	<-done

	if tb.returned || tb.skip == "" {
		t.Fatalf("Server returned without skipping (failure: %q)", tb.fail)
	}
	if tb.skip != mariadbtest.SkipMessage || !strings.Contains(tb.skip, "run scripts/test") {
		t.Errorf("skip message %q does not say how to run the tests", tb.skip)
	}
}

// recordingTB records a skip or a failure instead of acting on it, and ends
// the goroutine that called it as the real methods do.
type recordingTB struct {
	testing.TB
	skip, fail string
	returned   bool
}

func (r *recordingTB) Helper() {}

func (r *recordingTB) Skip(args ...any) {
	r.skip = fmt.Sprint(args...)
	runtime.Goexit()
}

func (r *recordingTB) Skipf(format string, args ...any) {
	r.skip = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *recordingTB) Fatal(args ...any) {
	r.fail = fmt.Sprint(args...)
	runtime.Goexit()
}

func (r *recordingTB) Fatalf(format string, args ...any) {
	r.fail = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// ping opens one connection with cfg and returns the error, if any.
func ping(cfg *mysql.Config) error {
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		return err
	}
	db := sql.OpenDB(connector)
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return db.PingContext(ctx)
}
