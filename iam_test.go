package rdsconn

import (
	"context"
	"crypto/x509"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/go-sql-driver/mysql"
	"github.com/rdsconn/rdsconn/rdstest"
)

var (
	credsA = aws.Credentials{AccessKeyID: "AKIDTESTA", SecretAccessKey: "secretA", Source: "test"}
	credsB = aws.Credentials{AccessKeyID: "AKIDTESTB", SecretAccessKey: "secretB",
		SessionToken: "session-b", Source: "test"}
)

// swappableCreds is a credentials provider whose answer a test changes.
type swappableCreds struct {
	mu sync.Mutex
	v  aws.Credentials
	n  int
}

func (p *swappableCreds) Retrieve(context.Context) (aws.Credentials, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	return p.v, nil
}

func (p *swappableCreds) set(v aws.Credentials) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.v = v
}

// iamFixture is an IAM-checking endpoint and a connector aimed at it, with
// a clock both share and a count of the tokens built.
type iamFixture struct {
	ep     *rdstest.IAMEndpoint
	clock  *fakeClock
	creds  *swappableCreds
	builds atomic.Int32
	conn   *Connector
	db     *sql.DB
}

func newIAMFixture(t *testing.T, opts ...Option) *iamFixture {
	t.Helper()
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	f := &iamFixture{clock: newFakeClock("12:00:00"), creds: &swappableCreds{v: credsA}}
	f.clock.t = time.Now().Truncate(time.Second) // near real time: the TLS certs are real
	ep, err := rdstest.NewIAMEndpoint(rdstest.IAMOptions{
		Users:       []string{"app"},
		Credentials: []aws.Credentials{credsA, credsB},
		Now:         f.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ep.Close() })
	f.ep = ep

	// Tokens are signed at the fake clock's time, so that moving the clock
	// moves both the connector and the endpoint.
	builder := func(ctx context.Context, endpoint, region, user string,
		creds aws.CredentialsProvider) (string, error) {
		f.builds.Add(1)
		v, err := creds.Retrieve(ctx)
		if err != nil {
			return "", err
		}
		return rdstest.TokenAt(ctx, endpoint, region, user, v, f.clock.Now())
	}
	cfg := mysql.NewConfig()
	cfg.User = "app"
	cfg.Addr = ep.Endpoint()
	cfg.DBName = "shop"
	cfg.DialFunc = ep.DialContext
	all := append([]Option{
		WithIAM(),
		WithRootCAs(ep.CA().Pool()),
		WithAWSConfig(aws.Config{Credentials: f.creds}),
		withClock(f.clock.Now),
		withTokenBuilder(builder),
	}, opts...)
	f.conn = New(cfg, all...)
	f.db = sql.OpenDB(f.conn)
	t.Cleanup(func() { f.db.Close() })
	return f
}

// connectNew opens one new connection, whatever the pool holds.
func (f *iamFixture) connectNew(t *testing.T) error {
	t.Helper()
	conn, err := f.conn.Connect(context.Background())
	if err == nil {
		conn.Close()
	}
	return err
}

func TestIAMEndToEnd(t *testing.T) {
	f := newIAMFixture(t)
	var user string
	if err := f.db.QueryRow("SELECT CURRENT_USER()").Scan(&user); err != nil {
		t.Fatalf("query through rdsconn: %v", err)
	}
	if !strings.HasPrefix(user, "app@") {
		t.Fatalf("CURRENT_USER() = %q, want app@...", user)
	}
	for range 20 {
		if err := f.connectNew(t); err != nil {
			t.Fatal(err)
		}
	}
	st := f.ep.Stats()
	if st.Accepted != 21 || st.DeniedTotal() != 0 || f.builds.Load() != 1 {
		t.Fatalf("accepted %d, denied %d, tokens built %d; want 21, 0, 1",
			st.Accepted, st.DeniedTotal(), f.builds.Load())
	}
	if got := st.Tokens[0]; got.Region != "us-east-1" || got.AccessKeyID != credsA.AccessKeyID {
		t.Fatalf("token facts %+v", got)
	}
}

func TestIAMSessionCredentials(t *testing.T) {
	f := newIAMFixture(t)
	f.creds.set(credsB)
	if err := f.connectNew(t); err != nil {
		t.Fatal(err)
	}
	if st := f.ep.Stats(); st.Accepted != 1 || !st.Tokens[0].HasSecurityToken {
		t.Fatalf("stats %+v, want one accepted token with a security token", st)
	}
}

// TestIAMTokenNotFrozen covers K04: sixteen minutes after the first
// connection, a new connection gets a freshly built token and no
// access-denied error reaches the caller.
func TestIAMTokenNotFrozen(t *testing.T) {
	f := newIAMFixture(t)
	if err := f.db.Ping(); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(16 * time.Minute)
	ctx := context.Background()
	held, err := f.db.Conn(ctx) // the pooled connection
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	second, err := f.db.Conn(ctx) // forces a new one
	if err != nil {
		t.Fatalf("second connection 16 minutes later: %v", err)
	}
	defer second.Close()
	if err := second.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
	st := f.ep.Stats()
	if st.DeniedTotal() != 0 || f.builds.Load() != 2 || st.Accepted != 2 {
		t.Fatalf("denied %d, built %d, accepted %d; want 0, 2, 2",
			st.DeniedTotal(), f.builds.Load(), st.Accepted)
	}
}

// TestIAMReuseBoundary covers K05: a token built at 12:00:00 (valid until
// 12:15:00) is handed out at 12:09:59, and at 12:10:01 a new one is built.
func TestIAMReuseBoundary(t *testing.T) {
	tests := []struct {
		name  string
		after time.Duration
		reuse bool
	}{
		{"K05 one second before the reuse window ends", 10*time.Minute - time.Second, true},
		{"K05 one second after the reuse window ends", 10*time.Minute + time.Second, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newIAMFixture(t)
			if err := f.connectNew(t); err != nil {
				t.Fatal(err)
			}
			f.clock.Advance(tt.after)
			if err := f.connectNew(t); err != nil {
				t.Fatal(err)
			}
			tokens := f.ep.Stats().Tokens
			reused := tokens[1].Date.Equal(tokens[0].Date)
			if reused != tt.reuse {
				t.Fatalf("second token signed at %v, first at %v: reused %v, want %v",
					tokens[1].Date, tokens[0].Date, reused, tt.reuse)
			}
		})
	}
}

// TestIAMCredentialsExpireFirst covers K06: credentials that expire at
// 12:05 sign a token at 12:03; at 12:06, and already within a minute of
// 12:05, the token is not reused: a new one is built with fresh
// credentials, and the server never says no.
func TestIAMCredentialsExpireFirst(t *testing.T) {
	tests := []struct {
		name  string
		after time.Duration
	}{
		{"K06 after the credentials expired", 3 * time.Minute},
		{"within a minute of the credentials' expiry", 90 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newIAMFixture(t)
			expiring := credsA
			expiring.CanExpire = true
			expiring.Expires = f.clock.Now().Add(2 * time.Minute)
			f.creds.set(expiring)
			if err := f.connectNew(t); err != nil {
				t.Fatal(err)
			}
			f.creds.set(credsB) // the fresh credentials
			f.clock.Advance(tt.after)
			if err := f.connectNew(t); err != nil {
				t.Fatal(err)
			}
			st := f.ep.Stats()
			if st.DeniedTotal() != 0 || len(st.Tokens) != 2 ||
				st.Tokens[1].AccessKeyID != credsB.AccessKeyID {
				t.Fatalf("denied %d, tokens %+v; want a second token from the fresh credentials",
					st.DeniedTotal(), st.Tokens)
			}
		})
	}
}

// TestIAMCredentialsRevoked: credentials revoked under the endpoint cause
// one access denied, one rebuild with the new credentials, and success.
func TestIAMCredentialsRevoked(t *testing.T) {
	f := newIAMFixture(t)
	if err := f.connectNew(t); err != nil {
		t.Fatal(err)
	}
	f.ep.RevokeCredentials(credsA.AccessKeyID)
	f.creds.set(credsB)
	if err := f.connectNew(t); err != nil {
		t.Fatalf("after revocation: %v", err)
	}
	st := f.ep.Stats()
	if st.DeniedTotal() != 1 || st.Accepted != 2 || f.builds.Load() != 2 {
		t.Fatalf("denied %d, accepted %d, built %d; want 1, 2, 2",
			st.DeniedTotal(), st.Accepted, f.builds.Load())
	}
}

// TestIAMDeniedRetriesOnce covers K08's last line: a server that keeps
// answering 1045 gets one rebuild and one retry, then the caller gets an
// error that still unwraps to the server's.
func TestIAMDeniedRetriesOnce(t *testing.T) {
	f := newIAMFixture(t)
	f.ep.FailLogins(10, rdstest.LoginFault{Number: 1045,
		Message: "Access denied for user 'app'@'10.0.0.1' (using password: NO)"})
	err := f.connectNew(t)
	var denied *AccessDeniedError
	var me *mysql.MySQLError
	if !errors.As(err, &denied) || !errors.As(err, &me) || me.Number != 1045 {
		t.Fatalf("err = %v, want an AccessDeniedError unwrapping to MySQL 1045", err)
	}
	if !strings.Contains(err.Error(), "rds-db:connect") ||
		!strings.Contains(err.Error(), "AWSAuthenticationPlugin") {
		t.Fatalf("error %q lists no likely causes", err)
	}
	if st := f.ep.Stats(); st.Faults != 2 || f.builds.Load() != 2 {
		t.Fatalf("%d logins and %d tokens, want 2 and 2", st.Faults, f.builds.Load())
	}
}

// TestIAMOtherErrorsKeepToken covers K17 (c) for IAM: errors other than
// access denied never drop the cached token.
func TestIAMOtherErrorsKeepToken(t *testing.T) {
	f := newIAMFixture(t)
	if err := f.connectNew(t); err != nil {
		t.Fatal(err)
	}
	f.ep.FailLogins(1, rdstest.LoginFault{Number: 1040})
	err := f.connectNew(t)
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1040 {
		t.Fatalf("err = %v, want MySQL 1040", err)
	}
	f.ep.FailLogins(1, rdstest.LoginFault{Drop: true})
	if err := f.connectNew(t); err == nil {
		t.Fatal("a dropped handshake succeeded")
	}
	if err := f.connectNew(t); err != nil {
		t.Fatal(err)
	}
	if n := f.builds.Load(); n != 1 {
		t.Fatalf("%d tokens built, want the first one kept through 1040 and a dropped handshake", n)
	}
}

func TestIsAccessDenied(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"1045", &mysql.MySQLError{Number: 1045}, true},
		{"1698", &mysql.MySQLError{Number: 1698}, true},
		{"K17 1045 wrapped twice",
			fmt.Errorf("b: %w", fmt.Errorf("a: %w", &mysql.MySQLError{Number: 1045})), true},
		{"K17 1040", &mysql.MySQLError{Number: 1040}, false},
		{"K17 1129", &mysql.MySQLError{Number: 1129}, false},
		{"K17 2003", &mysql.MySQLError{Number: 2003}, false},
		{"K17 timeout", context.DeadlineExceeded, false},
		{"text only", errors.New("Error 1045: Access denied"), false},
		{"nil", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := isAccessDenied(tt.err); got != tt.want {
				t.Fatalf("isAccessDenied(%v) = %v", tt.err, got)
			}
		})
	}
}

// TestIAMColdBurst covers K18: fifty Connects at once on a fresh connector
// build one token and all get in.
func TestIAMColdBurst(t *testing.T) {
	f := newIAMFixture(t)
	errs := connectBurst(f.conn, 50)
	if len(errs) != 0 || f.builds.Load() != 1 || f.ep.Stats().Accepted != 50 {
		t.Fatalf("%d failed (%v), %d tokens built, %d accepted; want 0, 1, 50",
			len(errs), errs, f.builds.Load(), f.ep.Stats().Accepted)
	}
}

// TestIAMUnknownCA covers K13: a server whose certificate does not chain to
// the embedded roots gets an error that says so and what to do, and the
// token is never sent.
func TestIAMUnknownCA(t *testing.T) {
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	ep, err := rdstest.NewIAMEndpoint(rdstest.IAMOptions{Users: []string{"app"},
		Credentials: []aws.Credentials{credsA}})
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	cfg := mysql.NewConfig()
	cfg.User, cfg.Addr, cfg.DialFunc = "app", ep.Endpoint(), ep.DialContext
	c := New(cfg, WithIAM(), WithAWSConfig(aws.Config{Credentials: &swappableCreds{v: credsA}}))
	_, err = c.Connect(context.Background())
	var ua x509.UnknownAuthorityError
	if !errors.Is(err, ErrUnknownCA) || !errors.As(err, &ua) {
		t.Fatalf("err = %v, want ErrUnknownCA wrapping x509.UnknownAuthorityError", err)
	}
	for _, want := range []string{ep.Hostname(), "WithRootCAs", "GovCloud"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q: %v", want, err)
		}
	}
	if st := ep.Stats(); len(st.Tokens) != 0 || st.ClearText != 0 {
		t.Fatalf("the endpoint saw a token: %+v", st)
	}
}
