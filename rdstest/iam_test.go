package rdstest

import (
	"context"
	"crypto/tls"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/rds/auth"
	"github.com/go-sql-driver/mysql"
)

var (
	testCreds = aws.Credentials{
		AccessKeyID:     "AKIDRDSTEST000000001",
		SecretAccessKey: "rdstest-secret-key-for-tests-only",
	}
	sessionCreds = aws.Credentials{
		AccessKeyID:     "ASIARDSTEST000000002",
		SecretAccessKey: "rdstest-session-secret-for-tests-only",
		SessionToken:    "rdstest-session-token//with+odd=chars",
	}
)

func init() {
	// The driver logs a fallback when a client refuses clear-text passwords.
	_ = mysql.SetLogger(log.New(io.Discard, "", 0))
}

func newEndpoint(t *testing.T, opts IAMOptions) *IAMEndpoint {
	t.Helper()
	if opts.Users == nil {
		opts.Users = []string{"app", "admin"}
	}
	if opts.Credentials == nil {
		opts.Credentials = []aws.Credentials{testCreds, sessionCreds}
	}
	e, err := NewIAMEndpoint(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// testEndpoint is what connect needs of an IAMEndpoint or a PasswordEndpoint.
type testEndpoint interface {
	Endpoint() string
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	ClientTLSConfig() *tls.Config
}

// clientConfig is go-sql-driver's configuration for logging in to e, with
// or without TLS, and with mysql_clear_password allowed.
func clientConfig(e testEndpoint, user, password string, useTLS bool) *mysql.Config {
	cfg := mysql.NewConfig()
	cfg.User, cfg.Passwd = user, password
	cfg.Net, cfg.Addr, cfg.DialFunc = "tcp", e.Endpoint(), e.DialContext
	cfg.AllowCleartextPasswords = true
	if useTLS {
		cfg.TLS = e.ClientTLSConfig()
	}
	return cfg
}

func newConnector(t *testing.T, cfg *mysql.Config) driver.Connector {
	t.Helper()
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return connector
}

// connect logs in to the endpoint through go-sql-driver, with or without TLS.
func connect(t *testing.T, e testEndpoint, user, password string, useTLS bool) (*sql.DB, error) {
	t.Helper()
	db := sql.OpenDB(newConnector(t, clientConfig(e, user, password, useTLS)))
	t.Cleanup(func() { db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return db, db.PingContext(ctx)
}

func mustToken(t *testing.T, endpoint, region, user string, creds aws.Credentials,
	at time.Time) string {
	t.Helper()
	tok, err := TokenAt(context.Background(), endpoint, region, user, creds, at)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestIAMEndpointChecksTokens(t *testing.T) {
	now := time.Now()
	ep, region := DefaultEndpoint, "us-east-1"
	valid := func(t *testing.T) string { return mustToken(t, ep, region, "app", testCreds, now) }

	tests := []struct {
		name    string
		user    string
		token   func(t *testing.T) string
		advance time.Duration
		noTLS   bool
		want    Reason // empty: accepted
	}{
		{name: "valid token", user: "app", token: valid},
		{name: "valid token from BuildAuthToken", user: "app", token: func(t *testing.T) string {
			tok, err := auth.BuildAuthToken(context.Background(), ep, region, "app",
				credentials.NewStaticCredentialsProvider(testCreds.AccessKeyID,
					testCreds.SecretAccessKey, ""))
			if err != nil {
				t.Fatal(err)
			}
			return tok
		}},
		{name: "valid session credentials", user: "app", token: func(t *testing.T) string {
			return mustToken(t, ep, region, "app", sessionCreds, now)
		}},
		{name: "token in the older host:port/? form", user: "app", token: func(t *testing.T) string {
			return strings.Replace(valid(t), "?", "/?", 1)
		}},
		{name: "token 14 minutes old", user: "app", token: valid, advance: 14 * time.Minute},
		{name: "expired at 16 minutes", user: "app", token: valid, advance: 16 * time.Minute,
			want: ReasonExpired},
		{name: "dated 10 minutes ahead", user: "app", want: ReasonNotYetValid,
			token: func(t *testing.T) string {
				return mustToken(t, ep, region, "app", testCreds, now.Add(10*time.Minute))
			}},
		{name: "dated 4 minutes ahead is within skew", user: "app",
			token: func(t *testing.T) string {
				return mustToken(t, ep, region, "app", testCreds, now.Add(4*time.Minute))
			}},
		{name: "wrong region", user: "app", want: ReasonWrongRegion,
			token: func(t *testing.T) string {
				return mustToken(t, ep, "us-west-2", "app", testCreds, now)
			}},
		{name: "wrong host", user: "app", want: ReasonWrongEndpoint,
			token: func(t *testing.T) string {
				return mustToken(t, "db2.abc123.us-east-1.rds.amazonaws.com:3306", region, "app",
					testCreds, now)
			}},
		{name: "wrong port", user: "app", want: ReasonWrongEndpoint,
			token: func(t *testing.T) string {
				return mustToken(t, "db1.abc123.us-east-1.rds.amazonaws.com:3307", region, "app",
					testCreds, now)
			}},
		{name: "token for another DBUser", user: "app", want: ReasonWrongDBUser,
			token: func(t *testing.T) string {
				return mustToken(t, ep, region, "admin", testCreds, now)
			}},
		{name: "user not enabled for IAM", user: "nobody", want: ReasonUnknownUser,
			token: func(t *testing.T) string {
				return mustToken(t, ep, region, "nobody", testCreds, now)
			}},
		{name: "unknown access key", user: "app", want: ReasonUnknownKey,
			token: func(t *testing.T) string {
				other := testCreds
				other.AccessKeyID = "AKIDUNKNOWN000000000"
				return mustToken(t, ep, region, "app", other, now)
			}},
		{name: "signed with the wrong secret", user: "app", want: ReasonBadSignature,
			token: func(t *testing.T) string {
				other := testCreds
				other.SecretAccessKey = "not-the-secret"
				return mustToken(t, ep, region, "app", other, now)
			}},
		{name: "DBUser tampered", user: "admin", want: ReasonBadSignature,
			token: func(t *testing.T) string {
				return strings.Replace(valid(t), "DBUser=app", "DBUser=admin", 1)
			}},
		{name: "expiry tampered", user: "app", want: ReasonBadSignature,
			token: func(t *testing.T) string {
				return strings.Replace(valid(t), "X-Amz-Expires=900", "X-Amz-Expires=600", 1)
			}},
		{name: "parameter added", user: "app", want: ReasonBadSignature,
			token: func(t *testing.T) string { return valid(t) + "&Extra=1" }},
		{name: "expiry over 900 seconds", user: "app", want: ReasonBadExpires,
			token: func(t *testing.T) string {
				return strings.Replace(valid(t), "X-Amz-Expires=900", "X-Amz-Expires=3600", 1)
			}},
		{name: "session token missing", user: "app", want: ReasonSecurityToken,
			token: func(t *testing.T) string {
				noToken := sessionCreds
				noToken.SessionToken = ""
				return mustToken(t, ep, region, "app", noToken, now)
			}},
		{name: "session token wrong", user: "app", want: ReasonSecurityToken,
			token: func(t *testing.T) string {
				other := sessionCreds
				other.SessionToken = "stolen"
				return mustToken(t, ep, region, "app", other, now)
			}},
		{name: "not a token", user: "app", want: ReasonMalformed,
			token: func(*testing.T) string { return "hunter2" }},
		{name: "token with scheme", user: "app", want: ReasonMalformed,
			token: func(t *testing.T) string { return "https://" + valid(t) }},
		{name: "empty password", user: "app", want: ReasonNoPassword,
			token: func(*testing.T) string { return "" }},
		{name: "no TLS", user: "app", token: valid, noTLS: true, want: ReasonNoTLS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEndpoint(t, IAMOptions{Now: func() time.Time { return now }})
			tok := tt.token(t)
			e.Advance(tt.advance)

			db, err := connect(t, e, tt.user, tok, !tt.noTLS)
			st := e.Stats()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("login refused: %v (stats %+v)", err, st)
				}
				if st.Accepted != 1 || st.DeniedTotal() != 0 {
					t.Errorf("stats = %+v, want one accepted login", st)
				}
				var user string
				if err := db.QueryRow("SELECT CURRENT_USER()").Scan(&user); err != nil {
					t.Fatal(err)
				}
				if user != tt.user+"@%" {
					t.Errorf("CURRENT_USER() = %q, want %q", user, tt.user+"@%")
				}
				return
			}

			var myErr *mysql.MySQLError
			if !errors.As(err, &myErr) || myErr.Number != 1045 {
				t.Fatalf("err = %v, want MySQL error 1045", err)
			}
			if tok != "" && strings.Contains(err.Error(), tok) {
				t.Error("the error carries the token")
			}
			using := "YES"
			if tok == "" {
				using = "NO"
			}
			if !strings.Contains(myErr.Message, "(using password: "+using+")") {
				t.Errorf("message %q does not say using password: %s", myErr.Message, using)
			}
			if st.Accepted != 0 || st.Denied[tt.want] == 0 {
				t.Errorf("stats = %+v, want a denial for %s", st, tt.want)
			}
			if tt.noTLS {
				if st.ClearText == 0 || len(st.Tokens) != 0 {
					t.Errorf("stats = %+v, want a clear-text attempt and no token checked", st)
				}
			}
		})
	}
}

func TestIAMEndpointOffersClearPasswordDirectly(t *testing.T) {
	now := time.Now()
	e := newEndpoint(t, IAMOptions{OfferClearPassword: true})
	db, err := connect(t, e, "app", mustToken(t, e.Endpoint(), e.Region(), "app", testCreds, now),
		true)
	if err != nil {
		t.Fatal(err)
	}
	var one int
	if err := db.QueryRow("SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1 = %d, %v", one, err)
	}

	if _, err := connect(t, e, "app", mustToken(t, e.Endpoint(), e.Region(), "app", testCreds,
		now), false); err == nil {
		t.Fatal("login without TLS succeeded")
	}
	if st := e.Stats(); st.ClearText != 1 || st.Denied[ReasonNoTLS] != 1 {
		t.Errorf("stats = %+v, want one clear-text attempt refused", st)
	}
}

func TestIAMEndpointRefusesClientWithoutClearText(t *testing.T) {
	e := newEndpoint(t, IAMOptions{})
	cfg := clientConfig(e, "app", mustToken(t, e.Endpoint(), e.Region(), "app", testCreds,
		time.Now()), true)
	cfg.AllowCleartextPasswords = false
	_, err := newConnector(t, cfg).Connect(context.Background())
	if !errors.Is(err, mysql.ErrCleartextPassword) {
		t.Fatalf("err = %v, want ErrCleartextPassword", err)
	}
	waitFor(t, func() bool { return e.Stats().Aborted == 1 })
	if st := e.Stats(); len(st.Tokens) != 0 || st.ClearText != 0 {
		t.Errorf("stats = %+v, want no token seen", st)
	}
}

func TestIAMEndpointQueriesWithDSN(t *testing.T) {
	e := newEndpoint(t, IAMOptions{KeyType: RSA2048})
	name := fmt.Sprintf("rdstest-%p", t)
	if err := mysql.RegisterTLSConfig(name, e.ClientTLSConfig()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mysql.DeregisterTLSConfig(name) })
	tok := mustToken(t, e.Endpoint(), e.Region(), "app", testCreds, time.Now())
	dsn := fmt.Sprintf("app:%s@tcp(%s)/mydb?tls=%s&allowCleartextPasswords=true&maxAllowedPacket=0",
		tok, e.Addr(), name)
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	tests := []struct {
		query string
		want  string
	}{
		{"SELECT 1", "1"},
		{"select current_user()", "app@%"},
		{"SELECT VERSION()", "8.0.39"},
		{"SELECT @@version", "8.0.39"},
		{"SELECT @@max_allowed_packet", "67108864"},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			var got string
			if err := db.QueryRow(tt.query).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("%s = %q, want %q", tt.query, got, tt.want)
			}
		})
	}

	t.Run("TLS status", func(t *testing.T) {
		for _, v := range []string{"Ssl_version", "Ssl_cipher"} {
			var name, value string
			q := "SHOW STATUS LIKE '" + v + "'"
			if err := db.QueryRow(q).Scan(&name, &value); err != nil {
				t.Fatal(err)
			}
			if name != v || value == "" {
				t.Errorf("%s = %q %q", q, name, value)
			}
		}
	})
	t.Run("prepared statement", func(t *testing.T) {
		var got int
		if err := db.QueryRow("SELECT 1 /* ? */", 7).Scan(&got); err != nil || got != 1 {
			t.Fatalf("got %d, %v", got, err)
		}
	})
	t.Run("SET and ping", func(t *testing.T) {
		if _, err := db.Exec("SET time_zone = '+00:00'"); err != nil {
			t.Fatal(err)
		}
		if err := db.Ping(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("unknown query", func(t *testing.T) {
		if _, err := db.Exec("DROP TABLE users"); err == nil {
			t.Fatal("unknown query succeeded")
		}
	})
}

func TestIAMEndpointRotationAndRevocation(t *testing.T) {
	e := newEndpoint(t, IAMOptions{})
	login := func(creds aws.Credentials) error {
		_, err := connect(t, e, "app", mustToken(t, e.Endpoint(), e.Region(), "app", creds,
			e.Now()), true)
		return err
	}

	if err := login(sessionCreds); err != nil {
		t.Fatal(err)
	}
	rotated := sessionCreds
	rotated.SessionToken = "rotated-session-token"
	e.SetCredentials(rotated)
	if err := login(sessionCreds); err == nil {
		t.Error("token with the old session token accepted after rotation")
	}
	if err := login(rotated); err != nil {
		t.Errorf("token with the new session token refused: %v", err)
	}
	e.RevokeCredentials(rotated.AccessKeyID)
	if err := login(rotated); err == nil {
		t.Error("token accepted after revocation")
	}
	e.RemoveUser("app")
	if err := login(testCreds); err == nil {
		t.Error("login accepted for a removed user")
	}

	st := e.Stats()
	want := map[Reason]int{ReasonSecurityToken: 1, ReasonUnknownKey: 1, ReasonUnknownUser: 1}
	for r, n := range want {
		if st.Denied[r] != n {
			t.Errorf("Denied[%s] = %d, want %d", r, st.Denied[r], n)
		}
	}
	if st.Accepted != 2 || len(st.Tokens) != 5 {
		t.Errorf("stats = %+v, want 2 accepted of 5 tokens", st)
	}
	for _, f := range st.Tokens {
		if f.AccessKeyID == "" || f.Date.IsZero() || f.Expires != 15*time.Minute {
			t.Errorf("token facts incomplete: %+v", f)
		}
	}
}

func TestIAMEndpointFaults(t *testing.T) {
	tests := []struct {
		name       string
		fault      LoginFault
		wantNumber uint16 // 0: the connection is dropped
		tokenSeen  bool
	}{
		{name: "too many connections", fault: LoginFault{Number: 1040}, wantNumber: 1040},
		{name: "access denied after login", fault: LoginFault{Number: 1045, AfterLogin: true},
			wantNumber: 1045, tokenSeen: true},
		{name: "dropped during handshake", fault: LoginFault{Drop: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEndpoint(t, IAMOptions{})
			e.FailLogins(2, tt.fault)
			tok := mustToken(t, e.Endpoint(), e.Region(), "app", testCreds, time.Now())
			for i := range 2 {
				connector := newConnector(t, clientConfig(e, "app", tok, true))
				conn, err := connector.Connect(context.Background())
				if err == nil {
					conn.Close()
					t.Fatalf("attempt %d: login succeeded despite the fault", i)
				}
				var myErr *mysql.MySQLError
				if tt.wantNumber != 0 && (!errors.As(err, &myErr) || myErr.Number != tt.wantNumber) {
					t.Fatalf("attempt %d: err = %v, want MySQL error %d", i, err, tt.wantNumber)
				}
				if tt.wantNumber == 0 && errors.As(err, &myErr) {
					t.Fatalf("attempt %d: err = %v, want a dropped connection", i, err)
				}
			}
			if _, err := connect(t, e, "app", tok, true); err != nil {
				t.Fatalf("login after the faults: %v", err)
			}
			st := e.Stats()
			if st.Faults != 2 || st.Accepted != 1 {
				t.Errorf("stats = %+v, want 2 faults then 1 accepted", st)
			}
			if seen := len(st.Tokens) == 3; seen != tt.tokenSeen {
				t.Errorf("tokens checked = %d", len(st.Tokens))
			}
		})
	}
}

func TestEndpointCloseLeavesNoGoroutines(t *testing.T) {
	// start returns an endpoint, not yet closed, and app's password there.
	tests := []struct {
		name  string
		start func(t *testing.T) (testEndpoint, func() error, string)
	}{
		{"IAM", func(t *testing.T) (testEndpoint, func() error, string) {
			e, err := NewIAMEndpoint(IAMOptions{Users: []string{"app"},
				Credentials: []aws.Credentials{testCreds}})
			if err != nil {
				t.Fatal(err)
			}
			return e, e.Close, mustToken(t, e.Endpoint(), e.Region(), "app", testCreds, time.Now())
		}},
		{"password", func(t *testing.T) (testEndpoint, func() error, string) {
			e, err := NewPasswordEndpoint(PasswordOptions{Users: map[string]string{"app": "pw"}})
			if err != nil {
				t.Fatal(err)
			}
			return e, e.Close, "pw"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := runtime.NumGoroutine()
			e, closeEndpoint, password := tt.start(t)
			db := sql.OpenDB(newConnector(t, clientConfig(e, "app", password, true)))
			db.SetMaxIdleConns(5)
			for range 3 {
				if err := db.Ping(); err != nil {
					t.Fatal(err)
				}
			}
			// An idle client connection and a half-open one stay while Close runs.
			raw, err := e.DialContext(context.Background(), "tcp", e.Endpoint())
			if err != nil {
				t.Fatal(err)
			}
			if err := closeEndpoint(); err != nil {
				t.Fatal(err)
			}
			if err := closeEndpoint(); err != nil {
				t.Errorf("a second Close: %v", err)
			}
			raw.Close()
			db.Close()
			waitFor(t, func() bool { return runtime.NumGoroutine() <= before })
		})
	}
}

func TestIAMEndpointDialsOnlyItsEndpoint(t *testing.T) {
	e := newEndpoint(t, IAMOptions{})
	if _, err := e.DialContext(context.Background(), "tcp", "example.com:3306"); err == nil {
		t.Fatal("dialled an address that is not the endpoint")
	}
	c, err := e.DialContext(context.Background(), "tcp", strings.ToUpper(e.Hostname())+":3306")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestTokenAtMatchesBuildAuthToken(t *testing.T) {
	ctx := context.Background()
	real, err := auth.BuildAuthToken(ctx, DefaultEndpoint, "eu-west-1", "app",
		credentials.NewStaticCredentialsProvider(sessionCreds.AccessKeyID,
			sessionCreds.SecretAccessKey, sessionCreds.SessionToken))
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse("https://" + real)
	if err != nil {
		t.Fatal(err)
	}
	at, err := time.Parse(amzDateLayout, u.Query().Get("X-Amz-Date"))
	if err != nil {
		t.Fatal(err)
	}
	ours, err := TokenAt(ctx, DefaultEndpoint, "eu-west-1", "app", sessionCreds, at)
	if err != nil {
		t.Fatal(err)
	}
	if ours != real {
		t.Errorf("TokenAt differs from BuildAuthToken:\n got %s\nwant %s", ours, real)
	}

	policy := tokenPolicy{hostPort: DefaultEndpoint, region: "eu-west-1", user: "app",
		now: at.Add(time.Minute), creds: func(akid string) (aws.Credentials, bool) {
			return sessionCreds, akid == sessionCreds.AccessKeyID
		}}
	for _, tok := range []string{real, ours} {
		if f := checkToken(ctx, tok, policy); f.Reason != "" {
			t.Errorf("token refused: %s", f.Reason)
		}
	}

	if _, err := TokenAt(ctx, "no-port", "us-east-1", "app", testCreds, at); err == nil {
		t.Error("TokenAt accepted an endpoint without a port")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
