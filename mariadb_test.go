package rdsconn

// The scenarios of issue 3 that need the MariaDB server scripts/test starts:
// Secrets Manager secrets and their rotations, TLS, a rotating password file,
// and the cases of cases.md that need a real server. Without the server they
// skip, saying how to run them. Each prints a "SUMMARY scenario=..." line in
// verbose runs.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/smithy-go"
	"github.com/go-sql-driver/mysql"

	"github.com/rdsconn/rdsconn/internal/mariadbtest"
	"github.com/rdsconn/rdsconn/rdstest"
)

// mariaFixture is the test MariaDB server, a Secrets Manager fake and a log
// recorder, with every dial to the server counted.
type mariaFixture struct {
	srv   *mariadbtest.Info
	sm    *rdstest.SecretsManager
	admin *sql.DB
	logs  *logRecorder
	dials atomic.Int32
}

func newMariaFixture(t *testing.T) *mariaFixture {
	t.Helper()
	srv := mariadbtest.Server(t)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	sm := rdstest.NewSecretsManager("us-east-1")
	t.Cleanup(sm.Close)
	return &mariaFixture{srv: srv, sm: sm, admin: srv.AdminDB(t), logs: &logRecorder{}}
}

// config returns a config for the RDS-looking endpoint whose dials reach the
// server over loopback. It has no TLS, so that auto TLS decides.
func (f *mariaFixture) config(user, password string) *mysql.Config {
	cfg := f.srv.Config(mariadbtest.RDSEndpoint, user, password)
	cfg.TLS = nil
	cfg.DialFunc = f.countedDial(f.srv.DialFunc())
	return cfg
}

func (f *mariaFixture) countedDial(dial func(context.Context, string, string) (net.Conn, error),
) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		f.dials.Add(1)
		return dial(ctx, network, addr)
	}
}

// secretConnector returns a connector for cfg whose password comes from the
// fake's secret name, with auto TLS verified against the test CA.
func (f *mariaFixture) secretConnector(t *testing.T, cfg *mysql.Config, name string,
	opts ...Option) *Connector {
	t.Helper()
	all := append([]Option{
		WithSecret(name),
		WithAWSConfig(f.sm.AWSConfig()),
		WithRootCAs(f.srv.RootCAs),
		WithLogger(slog.New(f.logs)),
	}, opts...)
	c := New(cfg, all...)
	t.Cleanup(func() { c.Close() })
	return c
}

// getSecretValue returns how many GetSecretValue calls the fake has had.
func (f *mariaFixture) getSecretValue() int { return f.sm.Stats().GetSecretValue }

// secretJSON is an RDS secret value for user and password.
func secretJSON(user, password string) string {
	b, err := json.Marshal(map[string]any{"engine": "mysql", "host": rdsHost, "port": 3306,
		"username": user, "password": password})
	if err != nil {
		panic(err)
	}
	return string(b)
}

// newConnDB opens a pool on c that keeps no idle connection, so that every
// query opens a new connection through c.
func newConnDB(t *testing.T, c driver.Connector) *sql.DB {
	t.Helper()
	db := sql.OpenDB(c)
	db.SetMaxIdleConns(0)
	t.Cleanup(func() { db.Close() })
	return db
}

// whoami returns the user the server logged a new connection in as,
// without the host part.
func whoami(db *sql.DB) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var user string
	if err := db.QueryRowContext(ctx, "SELECT CURRENT_USER()").Scan(&user); err != nil {
		return "", err
	}
	user, _, _ = strings.Cut(user, "@")
	return user, nil
}

// sslVersion returns the TLS version of a new connection, "" for none.
func sslVersion(db *sql.DB) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var name, version string
	err := db.QueryRowContext(ctx, "SHOW SESSION STATUS LIKE 'Ssl_version'").Scan(&name, &version)
	return version, err
}

// logRecorder is a slog.Handler that keeps every record as one line of
// text, so that a test can count events and check that no secret leaks.
type logRecorder struct {
	mu    sync.Mutex
	lines []string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	b.WriteString(rec.Level.String() + " " + rec.Message)
	rec.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, b.String())
	return nil
}

func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }

// count returns how many records contain substr.
func (r *logRecorder) count(substr string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, l := range r.lines {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

// retries counts the "access denied; fetching a new password" events.
func (r *logRecorder) retries() int { return r.count("access denied; fetching") }

// checkNoLeak fails t when a record holds one of the secrets.
func (r *logRecorder) checkNoLeak(t *testing.T, secrets ...string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range r.lines {
		for _, s := range secrets {
			if strings.Contains(l, s) {
				t.Errorf("a log record holds a password: %q", l)
			}
		}
	}
}

// TestMariaDBSecretValues covers K16 on a real server and scenario 3's
// first connect and numeric port: an RDS secret logs in as its username
// with its password exactly as stored, whether the port is a number or a
// string; an unusable value is a clear error and nothing is dialled.
func TestMariaDBSecretValues(t *testing.T) {
	f := newMariaFixture(t)
	const pw = `Zq9%K>u~(_b.&Rj#xF!P-B?`
	user := f.srv.CreateUser(t, "app", pw)
	full := `{"engine":"mysql","host":"` + rdsHost + `","port":3306,"username":"` + user +
		`","password":"Zq9%K>u~(_b.&Rj#xF!P-B?"}`

	tests := []struct {
		name    string
		value   string
		wantErr string // "" when the login must succeed
	}{
		{"K16 RDS secret, numeric port, user from the secret", full, ""},
		{"K16 port as a string", strings.Replace(full, `3306`, `"3306"`, 1), ""},
		{"K16 not JSON", "s3cretValue", "not a JSON object"},
		{"K16 no password", `{"username":"` + user + `"}`, `no non-empty "password"`},
		{"K16 empty password", `{"password":""}`, `no non-empty "password"`},
	}
	connected, refused := 0, 0
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := fmt.Sprintf("k16/%d", i)
			f.sm.PutSecret(name, tt.value)
			calls, dials := f.getSecretValue(), f.dials.Load()
			db := newConnDB(t, f.secretConnector(t, f.config("", ""), name))

			got, err := whoami(db)
			if tt.wantErr == "" {
				if err != nil || got != user {
					t.Fatalf("logged in as %q, %v; want %q", got, err, user)
				}
				connected++
				return
			}
			var fe *FetchError
			if !errors.Is(err, ErrSecretFormat) || !errors.As(err, &fe) || fe.Temporary() ||
				!strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v; want a non-temporary FetchError matching ErrSecretFormat "+
					"that says %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "s3cretValue") {
				t.Fatalf("the error quotes the secret value: %v", err)
			}
			if n := f.dials.Load() - dials; n != 0 {
				t.Fatalf("%d dials with an unusable secret, want none", n)
			}
			if n := f.getSecretValue() - calls; n != 1 {
				t.Fatalf("%d GetSecretValue calls, want 1", n)
			}
			refused++
		})
	}
	f.logs.checkNoLeak(t, pw)
	t.Logf("SUMMARY scenario=K16-secret-values rows=%d connected=%d refused_before_dial=%d "+
		"getsecretvalue=%d dials=%d", len(tests), connected, refused, f.getSecretValue(),
		f.dials.Load())
}

// TestMariaDBSecretSingleUserRotation covers scenario 3's single-user
// rotation: AWSPENDING gets the new password, the database changes to it
// while AWSCURRENT still holds the old one, and AWSCURRENT moves later. No
// caller sees an error at any step.
func TestMariaDBSecretSingleUserRotation(t *testing.T) {
	f := newMariaFixture(t)
	const old, next = "old-Pw:1/?&#%", "new-Pw@2/?&#%"
	user := f.srv.CreateUser(t, "app", old)
	const name = "prod/shop/app"
	f.sm.PutSecret(name, secretJSON(user, old))
	clock := &fakeClock{t: time.Now()}
	db := newConnDB(t, f.secretConnector(t, f.config("", ""), name, withClock(clock.Now)))

	step := func(what string, wantCurrent, wantPending, wantRetries int) {
		t.Helper()
		if got, err := whoami(db); err != nil || got != user {
			t.Fatalf("%s: logged in as %q, %v; want %q", what, got, err, user)
		}
		st := f.sm.Stats()
		if st.ByStage["AWSCURRENT"] != wantCurrent || st.ByStage["AWSPENDING"] != wantPending ||
			f.logs.retries() != wantRetries {
			t.Fatalf("%s: GetSecretValue by stage %v, %d access-denied retries; "+
				"want AWSCURRENT %d, AWSPENDING %d, %d retries", what, st.ByStage,
				f.logs.retries(), wantCurrent, wantPending, wantRetries)
		}
	}

	step("first connect", 1, 0, 0)
	pending, err := f.sm.PutPending(name, secretJSON(user, next))
	if err != nil {
		t.Fatal(err)
	}
	step("AWSPENDING created, database unchanged: the cached password", 1, 0, 0)

	f.srv.SetPassword(t, user, next)
	// The cached password is refused, AWSCURRENT fetched afresh is refused
	// too, and AWSPENDING gets in.
	step("database changed, AWSCURRENT not yet moved", 2, 1, 1)
	if f.logs.count("using the AWSPENDING version of the secret") != 1 {
		t.Fatal("no log record says that AWSPENDING was used")
	}
	step("the AWSPENDING password is reused", 2, 1, 1)

	if err := f.sm.Promote(name, pending); err != nil {
		t.Fatal(err)
	}
	step("AWSCURRENT moved", 2, 1, 1)
	clock.Advance(pendingTTL + time.Second)
	step("AWSPENDING's reuse time over: AWSCURRENT fetched, no refusal", 3, 1, 1)

	f.logs.checkNoLeak(t, old, next)
	st := f.sm.Stats()
	t.Logf("SUMMARY scenario=secret-single-user-rotation getsecretvalue=%d current=%d "+
		"pending=%d access_denied_retries=%d caller_errors=0", st.GetSecretValue,
		st.ByStage["AWSCURRENT"], st.ByStage["AWSPENDING"], f.logs.retries())
}

// TestMariaDBSecretAlternatingUsers covers K17 (a) and scenario 3's
// alternating users: the secret moves from app/A to app_clone/B, the server
// stops accepting app/A, and the next connection gets 1045, fetches once
// and logs in as app_clone with B.
func TestMariaDBSecretAlternatingUsers(t *testing.T) {
	f := newMariaFixture(t)
	const pwA, pwB = "A-pw/1?&", "B-pw@2#%"
	app := f.srv.CreateUser(t, "app", pwA)
	clone := f.srv.CreateUser(t, "app_clone", pwB)
	const name = "prod/shop/alternating"
	f.sm.PutSecret(name, secretJSON(app, pwA))
	db := newConnDB(t, f.secretConnector(t, f.config("", ""), name))

	login := func(what, want string, wantCalls, wantRetries int) {
		t.Helper()
		if got, err := whoami(db); err != nil || got != want {
			t.Fatalf("%s: logged in as %q, %v; want %q", what, got, err, want)
		}
		if got := f.getSecretValue(); got != wantCalls || f.logs.retries() != wantRetries {
			t.Fatalf("%s: %d GetSecretValue calls, %d retries; want %d, %d", what, got,
				f.logs.retries(), wantCalls, wantRetries)
		}
	}
	login("first connect", app, 1, 0)
	f.sm.PutSecret(name, secretJSON(clone, pwB))
	login("AWSCURRENT moved, app/A still accepted: the cached password", app, 1, 0)
	f.srv.SetPassword(t, app, "retired-"+pwA)
	login("K17a app/A refused", clone, 2, 1)
	login("app_clone/B reused", clone, 2, 1)

	f.logs.checkNoLeak(t, pwA, pwB)
	t.Logf("SUMMARY scenario=K17a-alternating-users getsecretvalue=%d access_denied_retries=%d "+
		"final_user=app_clone caller_errors=0", f.getSecretValue(), f.logs.retries())
}

// k09Token is the token of K09, used here as a plain password: the server
// must receive it byte for byte, whatever the source.
const k09Token = "db1.abc123.us-east-1.rds.amazonaws.com:3306/?Action=connect&DBUser=app" +
	"&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20240101%2Fus-east-1" +
	"%2Frds-db%2Faws4_request&X-Amz-Date=20240101T000000Z&X-Amz-Expires=900" +
	"&X-Amz-SignedHeaders=host&X-Amz-Signature=00ff"

// TestMariaDBPasswordCharacters covers K09 on a real server: passwords with
// URL and quoting characters reach MariaDB byte for byte from a secret, a
// file, a function and, through the rdsmysql driver, a file named in the
// DSN. A password spliced into a DSN string would break at @ : / ? # %.
func TestMariaDBPasswordCharacters(t *testing.T) {
	f := newMariaFixture(t)
	passwords := []struct{ name, pw string }{
		{"K09 secret password", "p@ss:w/rd?&#%"},
		{"K09 token text", k09Token},
		{"K16 RDS-generated password", `Zq9%K>u~(_b.&Rj#xF!P-B?`},
		{"quotes, backslash, parentheses, unicode", `a'b"c\d)e(f%2Fg é€`},
	}
	dir := t.TempDir()

	// The rdsmysql driver gets its dials and TLS from names registered with
	// go-sql-driver, as a DSN-only program would.
	const netName, tlsName = "rdsconn-mariadb-test", "rdsconn-mariadb-test"
	mysql.RegisterDialContext(netName, func(ctx context.Context, addr string) (net.Conn, error) {
		return f.srv.DialFunc()(ctx, "tcp", addr)
	})
	if err := mysql.RegisterTLSConfig(tlsName, f.srv.TLSConfig(rdsHost)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mysql.DeregisterTLSConfig(tlsName) })

	sources := []struct {
		name string
		open func(t *testing.T, user, pw, file string) *sql.DB
	}{
		{"secret", func(t *testing.T, user, pw, _ string) *sql.DB {
			id := "k09/" + user
			f.sm.PutSecret(id, secretJSON(user, pw))
			return newConnDB(t, f.secretConnector(t, f.config(user, ""), id))
		}},
		{"file", func(t *testing.T, user, _, file string) *sql.DB {
			c := New(f.config(user, ""), WithPasswordFile(file), WithRootCAs(f.srv.RootCAs))
			return newConnDB(t, c)
		}},
		{"func", func(t *testing.T, user, pw, _ string) *sql.DB {
			fn := func(context.Context) (string, error) { return pw, nil }
			c := New(f.config(user, ""), WithPasswordFunc(fn), WithRootCAs(f.srv.RootCAs))
			return newConnDB(t, c)
		}},
		{"rdsmysql driver with rds-password-file", func(t *testing.T, user, _, file string) *sql.DB {
			// A / in a parameter value must be escaped: go-sql-driver splits the
			// DSN at its last /.
			dsn := user + "@" + netName + "(" + mariadbtest.RDSEndpoint + ")/" +
				mariadbtest.Database + "?tls=" + tlsName + "&rds-password-file=" +
				url.QueryEscape(file)
			db, err := sql.Open(DriverName, dsn)
			if err != nil {
				t.Fatal(err)
			}
			db.SetMaxIdleConns(0)
			t.Cleanup(func() { db.Close() })
			return db
		}},
	}
	logins := 0
	for i, p := range passwords {
		t.Run(p.name, func(t *testing.T) {
			user := f.srv.CreateUser(t, "k09", p.pw)
			file := filepath.Join(dir, fmt.Sprintf("password-%d", i))
			if err := os.WriteFile(file, []byte(p.pw+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			for _, s := range sources {
				db := s.open(t, user, p.pw, file)
				if got, err := whoami(db); err != nil || got != user {
					t.Fatalf("%s: logged in as %q, %v; want %q", s.name, got, err, user)
				}
				logins++
			}
		})
	}
	t.Logf("SUMMARY scenario=K09-password-characters passwords=%d sources=%d logins=%d",
		len(passwords), len(sources), logins)
}

// TestMariaDBTLS covers scenario 5 and K13 on a real server: auto TLS for
// RDS names verified against WithRootCAs, the explanatory error for a
// certificate the embedded roots do not know, no TLS for other hosts unless
// asked, and the caller's TLS choice winning over auto TLS.
func TestMariaDBTLS(t *testing.T) {
	f := newMariaFixture(t)
	const pw = "tls-Pw:1/?"
	user := f.srv.CreateUser(t, "tls", pw)
	const tlsName = "rdsconn-mariadb-tls"
	if err := mysql.RegisterTLSConfig(tlsName, &tls.Config{RootCAs: f.srv.RootCAs,
		MinVersion: tls.VersionTLS12}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mysql.DeregisterTLSConfig(tlsName) })
	const cluster = "app.cluster-abc123.us-east-1.rds.amazonaws.com:3306"

	tests := []struct {
		name     string
		addr     string
		params   string // DSN parameters
		opts     []Option
		userTLS  *tls.Config
		wantTLS  bool
		wantAuto bool
		wantErr  func(error) bool
	}{
		{name: "auto TLS for an instance name", addr: mariadbtest.RDSEndpoint,
			opts: []Option{WithRootCAs(f.srv.RootCAs)}, wantTLS: true, wantAuto: true},
		{name: "auto TLS for a cluster name", addr: cluster,
			opts: []Option{WithRootCAs(f.srv.RootCAs)}, wantTLS: true, wantAuto: true},
		{name: "auto TLS checks the name: another account", wantAuto: true,
			addr: "db1.xyz789.us-east-1.rds.amazonaws.com:3306",
			opts: []Option{WithRootCAs(f.srv.RootCAs)}, wantErr: isHostnameError},
		{name: "K13 unknown CA with the embedded roots", addr: mariadbtest.RDSEndpoint,
			wantAuto: true, wantErr: isExplainedUnknownCA},
		{name: "unknown CA with WithRootCAs", addr: mariadbtest.RDSEndpoint, wantAuto: true,
			opts: []Option{WithRootCAs(f.srv.OtherRootCAs)}, wantErr: isUnknownAuthority},
		{name: "non-RDS host: no TLS", addr: f.srv.Addr},
		{name: "K10 look-alike name: no TLS", addr: "x.rds.amazonaws.com.attacker.example:3306"},
		{name: "non-RDS host with a tls parameter", addr: f.srv.Addr, params: "tls=" + tlsName,
			wantTLS: true},
		{name: "tls=false wins on an RDS name", addr: mariadbtest.RDSEndpoint,
			params: "tls=false"},
		{name: "registered tls config wins over the embedded roots",
			addr: mariadbtest.RDSEndpoint, params: "tls=" + tlsName, wantTLS: true},
		{name: "tls=skip-verify wins over the embedded roots", addr: mariadbtest.RDSEndpoint,
			params: "tls=skip-verify", wantTLS: true},
		{name: "mysql.Config.TLS wins", addr: mariadbtest.RDSEndpoint,
			userTLS: f.srv.TLSConfig(rdsHost), wantTLS: true},
		{name: "WithoutAutoTLS", addr: mariadbtest.RDSEndpoint,
			opts: []Option{WithoutAutoTLS(), WithRootCAs(f.srv.RootCAs)}},
	}
	var withTLS, plain, refused int
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dsn := fmt.Sprintf("%s:%s@tcp(%s)/%s", user, pw, tt.addr, mariadbtest.Database)
			if tt.params != "" {
				dsn += "?" + tt.params
			}
			cfg, err := ParseDSN(dsn)
			if err != nil {
				t.Fatal(err)
			}
			cfg.DialFunc = f.srv.DialFunc()
			cfg.TLS = tt.userTLS
			c := New(cfg, tt.opts...)
			if plan := c.Plan(); plan.Err != nil || plan.AutoTLS != tt.wantAuto {
				t.Fatalf("plan: auto TLS %v, err %v; want auto TLS %v", plan.AutoTLS, plan.Err,
					tt.wantAuto)
			}
			version, err := sslVersion(newConnDB(t, c))
			if tt.wantErr != nil {
				if !tt.wantErr(err) {
					t.Fatalf("err = %v, not the error expected", err)
				}
				refused++
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (version != "") != tt.wantTLS {
				t.Fatalf("Ssl_version = %q; want TLS %v", version, tt.wantTLS)
			}
			if tt.wantTLS {
				withTLS++
			} else {
				plain++
			}
		})
	}
	t.Logf("SUMMARY scenario=tls-on-mariadb cases=%d tls=%d plain=%d refused_handshakes=%d",
		len(tests), withTLS, plain, refused)
}

func isHostnameError(err error) bool {
	var he x509.HostnameError
	return errors.As(err, &he) && !errors.Is(err, ErrUnknownCA)
}

func isUnknownAuthority(err error) bool {
	var ua x509.UnknownAuthorityError
	return errors.As(err, &ua)
}

// isExplainedUnknownCA checks K13's error: it matches ErrUnknownCA, keeps
// the x509 error, and says what the bundle lacks and what to do.
func isExplainedUnknownCA(err error) bool {
	if !errors.Is(err, ErrUnknownCA) || !isUnknownAuthority(err) {
		return false
	}
	for _, want := range []string{rdsHost, "WithRootCAs", "GovCloud", "ca-west-1",
		"truststore.pki.rds.amazonaws.com"} {
		if !strings.Contains(err.Error(), want) {
			return false
		}
	}
	return true
}

// TestMariaDBPasswordFile covers scenario 6, a password file rotated as a
// mounted Kubernetes secret is: a file updated before the database is read
// again after the first refusal; a file updated late gives an error that
// says so, and the next connection after the update gets in; a file and a
// database changed together are read again when the file's reuse time is
// over, without a refusal.
func TestMariaDBPasswordFile(t *testing.T) {
	f := newMariaFixture(t)
	file := filepath.Join(t.TempDir(), "password")
	write := func(pw string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(pw+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pws := []string{"file-0/?&", "file-1@:#", "file-2%25", "file-3'x"}
	write(pws[0])
	user := f.srv.CreateUser(t, "file", pws[0])
	clock := &fakeClock{t: time.Now()}
	c := New(f.config(user, ""), WithPasswordFile(file), WithRootCAs(f.srv.RootCAs),
		WithLogger(slog.New(f.logs)), withClock(clock.Now))
	db := newConnDB(t, c)
	login := func(what string, wantRetries int) {
		t.Helper()
		if got, err := whoami(db); err != nil || got != user {
			t.Fatalf("%s: logged in as %q, %v; want %q", what, got, err, user)
		}
		if got := f.logs.retries(); got != wantRetries {
			t.Fatalf("%s: %d access-denied retries, want %d", what, got, wantRetries)
		}
	}
	login("first connect", 0)

	write(pws[1])
	login("file updated, database not yet: the cached password", 0)
	f.srv.SetPassword(t, user, pws[1])
	login("database updated: refused once, file read again", 1)

	f.srv.SetPassword(t, user, pws[2])
	_, err := whoami(db)
	var denied *AccessDeniedError
	if !errors.As(err, &denied) || !strings.Contains(err.Error(), "updated with a delay") {
		t.Fatalf("with a stale file: err = %v; want an AccessDeniedError naming the "+
			"mount delay", err)
	}
	write(pws[2])
	login("file caught up", 2)

	write(pws[3])
	f.srv.SetPassword(t, user, pws[3])
	clock.Advance(fileTTL + time.Second)
	login("file and database changed together, reuse time over", 2)

	f.logs.checkNoLeak(t, pws...)
	t.Logf("SUMMARY scenario=rotating-password-file rotations=3 access_denied_retries=%d "+
		"caller_errors=1 (file updated after the database, expected)", f.logs.retries())
}

// TestMariaDBErrorsKeepPassword covers K17 (c) on a real server: a 1045
// wrapped with %w (here by a dialer) is recognised and retried, while 1040,
// 1129, 2003-style refused dials and timeouts never drop the cached
// password: after each, the next connection uses it without a fetch.
func TestMariaDBErrorsKeepPassword(t *testing.T) {
	f := newMariaFixture(t)
	const pw = "keep-Pw/1?"
	user := f.srv.CreateUser(t, "k17c", pw)
	const name = "prod/k17c"
	f.sm.PutSecret(name, secretJSON(user, pw))

	// The faults: an endpoint that answers MySQL errors before its greeting,
	// an address that refuses, a listener that never answers.
	ep, err := rdstest.NewIAMEndpoint(rdstest.IAMOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ep.Close() })
	refusing, err := rdstest.RefusingAddr()
	if err != nil {
		t.Fatal(err)
	}
	silent, err := rdstest.NewSilentListener()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })

	var fault atomic.Pointer[func(context.Context) (net.Conn, error)]
	toServer := f.srv.DialFunc()
	cfg := f.config("", "")
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		f.dials.Add(1)
		if fp := fault.Swap(nil); fp != nil {
			return (*fp)(ctx)
		}
		return toServer(ctx, network, addr)
	}
	c := f.secretConnector(t, cfg, name)
	connect := func(ctx context.Context) error {
		conn, err := c.Connect(ctx)
		if err == nil {
			conn.Close()
		}
		return err
	}
	if err := connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	cached := c.cache.cur.Load()

	var d net.Dialer
	tests := []struct {
		name    string
		dial    func(context.Context) (net.Conn, error)
		timeout time.Duration
		check   func(error) bool
	}{
		{"1040 too many connections", func(ctx context.Context) (net.Conn, error) {
			ep.FailLogins(1, rdstest.LoginFault{Number: 1040})
			return ep.DialContext(ctx, "tcp", ep.Endpoint())
		}, 0, mysqlErrorNumber(1040)},
		{"1129 host blocked", func(ctx context.Context) (net.Conn, error) {
			ep.FailLogins(1, rdstest.LoginFault{Number: 1129})
			return ep.DialContext(ctx, "tcp", ep.Endpoint())
		}, 0, mysqlErrorNumber(1129)},
		{"2003 connection refused", func(ctx context.Context) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", refusing)
		}, 0, isNetError},
		{"timeout: a server that never answers", func(ctx context.Context) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", silent.Addr())
		}, 300 * time.Millisecond, errorIsDeadline},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			if tt.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.timeout)
				defer cancel()
			}
			fault.Store(&tt.dial)
			err := connect(ctx)
			var denied *AccessDeniedError
			if !tt.check(err) || errors.As(err, &denied) {
				t.Fatalf("err = %v, not the fault injected", err)
			}
			if c.cache.cur.Load() != cached {
				t.Fatal("the fault dropped the cached password")
			}
			if err := connect(context.Background()); err != nil {
				t.Fatalf("next connection: %v", err)
			}
			if n := f.getSecretValue(); n != 1 || f.logs.retries() != 0 {
				t.Fatalf("%d GetSecretValue calls, %d retries; want 1 and 0", n,
					f.logs.retries())
			}
		})
	}

	// A dialer, such as a proxy library, that wraps the server's 1045.
	wrapped := func(context.Context) (net.Conn, error) {
		return nil, fmt.Errorf("proxy: login: %w", &mysql.MySQLError{Number: 1045,
			SQLState: [5]byte{'2', '8', '0', '0', '0'}, Message: "Access denied for user"})
	}
	fault.Store(&wrapped)
	if err := connect(context.Background()); err != nil {
		t.Fatalf("after a wrapped 1045: %v; want one fetch and a retry that gets in", err)
	}
	// AWSCURRENT is fetched again and, being the refused version still, a
	// look at AWSPENDING (there is none) follows: two calls for the refusal.
	if n := f.getSecretValue(); n != 3 || f.logs.retries() != 1 {
		t.Fatalf("after a wrapped 1045: %d GetSecretValue calls, %d retries; want 3 and 1",
			n, f.logs.retries())
	}
	t.Logf("SUMMARY scenario=K17c-errors-keep-password faults=%d getsecretvalue_after_faults=1 "+
		"wrapped_1045_retries=1 getsecretvalue=%d", len(tests), f.getSecretValue())
}

func mysqlErrorNumber(n uint16) func(error) bool {
	return func(err error) bool {
		var me *mysql.MySQLError
		return errors.As(err, &me) && me.Number == n
	}
}

func isNetError(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe)
}

// TestMariaDBColdBurst covers K18 with the Secrets Manager fake: fifty
// Connects at once on a fresh connector make one GetSecretValue and all get
// in; when that call fails, all fifty get the error, nothing is cached or
// dialled, and the next Connect fetches again.
func TestMariaDBColdBurst(t *testing.T) {
	f := newMariaFixture(t)
	const pw = "burst-Pw/1?"
	user := f.srv.CreateUser(t, "k18", pw)
	const n = 50

	burst := func(c *Connector) (failed int, errs []error) {
		errs = connectBurst(c, n)
		return len(errs), errs
	}

	tests := []struct {
		name      string
		fault     rdstest.APIFault
		faults    int // calls failed: the SDK retries a server error
		wantCalls int
	}{
		{"no fault", rdstest.APIFault{}, 0, 1},
		{"access denied by Secrets Manager", rdstest.FaultAccessDenied, 1, 1},
		{"server error through the SDK's retries", rdstest.FaultInternal, 3, 3},
	}
	var lines []string
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := fmt.Sprintf("k18/%d", i)
			f.sm.PutSecret(name, secretJSON(user, pw))
			f.sm.ResetStats()
			f.sm.SetDelay(200 * time.Millisecond) // let all fifty pile up
			defer f.sm.SetDelay(0)
			if tt.faults > 0 {
				f.sm.FailNext(tt.faults, tt.fault)
			}
			dials := f.dials.Load()
			c := f.secretConnector(t, f.config("", ""), name)

			failed, errs := burst(c)
			calls := f.getSecretValue()
			if calls != tt.wantCalls {
				t.Fatalf("%d GetSecretValue calls for %d Connects, want %d", calls, n,
					tt.wantCalls)
			}
			if tt.faults == 0 {
				if failed != 0 || f.dials.Load()-dials != n {
					t.Fatalf("%d of %d failed (%v), %d dials", failed, n, errs,
						f.dials.Load()-dials)
				}
				lines = append(lines, fmt.Sprintf("ok:%d/%d,calls=%d", n-failed, n, calls))
				return
			}
			for _, err := range errs {
				var fe *FetchError
				var api smithy.APIError
				if !errors.As(err, &fe) || !errors.As(err, &api) || api.ErrorCode() != tt.fault.Type {
					t.Fatalf("err = %v; want a FetchError wrapping %s", err, tt.fault.Type)
				}
			}
			if failed != n || c.cache.cur.Load() != nil || f.dials.Load() != dials {
				t.Fatalf("%d of %d failed, cached %v, %d dials; want all failed, nothing "+
					"cached, no dial", failed, n, c.cache.cur.Load() != nil, f.dials.Load()-dials)
			}
			f.sm.SetDelay(0)
			conn, err := c.Connect(context.Background())
			if err != nil {
				t.Fatalf("next Connect: %v", err)
			}
			conn.Close()
			if got := f.getSecretValue(); got != calls+1 {
				t.Fatalf("next Connect made %d calls, want 1 new fetch", got-calls)
			}
			lines = append(lines, fmt.Sprintf("%s:failed=%d/%d,calls=%d,refetch=1",
				tt.fault.Type, failed, n, calls))
		})
	}
	t.Logf("SUMMARY scenario=K18-cold-burst-secret goroutines=%d %s", n,
		strings.Join(lines, " "))
}

// Core bugs these tests found. While one is true, the test that shows it
// measures it, logs the figures and skips instead of failing; set it to
// false once the core is fixed.
const (
	// blockedOnPendingSingleFlight: Connector.tryPending (connector.go)
	// calls GetSecretValue(AWSPENDING) once per refused Connect instead of
	// once per rotation, and Connects refused meanwhile drop and refetch
	// AWSCURRENT again.
	blockedOnPendingSingleFlight = false
	// blockedOnPendingAfterPromote: when AWSCURRENT moves between the
	// refetch and the AWSPENDING read, tryPending finds no AWSPENDING and
	// Connect fails although AWSCURRENT now holds the working password.
	blockedOnPendingAfterPromote = false
)

// hookedHTTP calls before with the VersionStage of each GetSecretValue
// request, then sends it on, so that a test can act between two calls.
type hookedHTTP struct {
	next   aws.HTTPClient
	before func(stage string)
}

func (h hookedHTTP) Do(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		body, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
		var in struct{ VersionStage string }
		if json.Unmarshal(body, &in) == nil {
			h.before(in.VersionStage)
		}
	}
	return h.next.Do(req)
}

// TestMariaDBSecretRotationConcurrentRefusals: during a single-user
// rotation (database changed, AWSCURRENT not yet moved), twenty Connects
// refused at once should cost one AWSCURRENT refetch and one AWSPENDING
// read between them, as the README promises for every other refusal
// ("fifty refusals at once cause one fetch"), and all get in.
func TestMariaDBSecretRotationConcurrentRefusals(t *testing.T) {
	f := newMariaFixture(t)
	const old, next = "conc-old/?&", "conc-new@#%"
	user := f.srv.CreateUser(t, "conc", old)
	const name = "prod/conc"
	f.sm.PutSecret(name, secretJSON(user, old))
	c := f.secretConnector(t, f.config("", ""), name)
	if conn, err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	} else {
		conn.Close()
	}
	if _, err := f.sm.PutPending(name, secretJSON(user, next)); err != nil {
		t.Fatal(err)
	}
	f.srv.SetPassword(t, user, next)
	f.sm.ResetStats()
	f.sm.SetDelay(50 * time.Millisecond) // Secrets Manager is not instant

	const n = 20
	errs := connectBurst(c, n)
	st := f.sm.Stats()
	t.Logf("SUMMARY scenario=single-user-rotation-concurrent-refusals connects=%d failed=%d "+
		"getsecretvalue=%d current=%d pending=%d", n, len(errs), st.GetSecretValue,
		st.ByStage["AWSCURRENT"], st.ByStage["AWSPENDING"])
	if len(errs) != 0 {
		t.Fatalf("%d of %d Connects failed; first: %v", len(errs), n, errs[0])
	}
	if st.ByStage["AWSCURRENT"] <= 1 && st.ByStage["AWSPENDING"] <= 1 {
		if blockedOnPendingSingleFlight {
			t.Log("blockedOnPendingSingleFlight looks fixed: set it to false")
		}
		return
	}
	msg := fmt.Sprintf("%d concurrent refusals made %d AWSCURRENT and %d AWSPENDING calls; "+
		"want at most one each", n, st.ByStage["AWSCURRENT"], st.ByStage["AWSPENDING"])
	if blockedOnPendingSingleFlight {
		t.Skip("blocked on core bug: " + msg)
	}
	t.Fatal(msg)
}

// TestMariaDBSecretRotationFinishesMidConnect: a single-user rotation whose
// last step (AWSCURRENT moves to the new version, AWSPENDING goes away)
// lands between rdsconn's AWSCURRENT refetch and its AWSPENDING read. The
// new password is then AWSCURRENT, so the Connect should still get in.
func TestMariaDBSecretRotationFinishesMidConnect(t *testing.T) {
	f := newMariaFixture(t)
	const old, next = "mid-old/?&", "mid-new@#%"
	user := f.srv.CreateUser(t, "mid", old)
	const name = "prod/mid"
	f.sm.PutSecret(name, secretJSON(user, old))

	var pending string
	var promoted atomic.Bool
	awsCfg := f.sm.AWSConfig()
	awsCfg.HTTPClient = hookedHTTP{next: awsCfg.HTTPClient, before: func(stage string) {
		if stage == "AWSPENDING" && !promoted.Swap(true) {
			if err := f.sm.Promote(name, pending); err != nil {
				t.Error(err)
			}
		}
	}}
	c := f.secretConnector(t, f.config("", ""), name, WithAWSConfig(awsCfg))
	db := newConnDB(t, c)
	if _, err := whoami(db); err != nil {
		t.Fatal(err)
	}

	var err error
	if pending, err = f.sm.PutPending(name, secretJSON(user, next)); err != nil {
		t.Fatal(err)
	}
	f.srv.SetPassword(t, user, next)
	got, err := whoami(db)
	st := f.sm.Stats()
	t.Logf("SUMMARY scenario=rotation-finishes-mid-connect promoted=%v err=%v "+
		"getsecretvalue=%d by_stage=%v", promoted.Load(), err != nil, st.GetSecretValue,
		st.ByStage)
	if !promoted.Load() {
		t.Fatal("the test did not promote between the calls: AWSPENDING was never read")
	}
	if err == nil && got == user {
		if blockedOnPendingAfterPromote {
			t.Log("blockedOnPendingAfterPromote looks fixed: set it to false")
		}
		return
	}
	msg := fmt.Sprintf("Connect failed although AWSCURRENT holds the new password: %v", err)
	if blockedOnPendingAfterPromote {
		t.Skip("blocked on core bug: " + msg)
	}
	t.Fatal(msg)
}
