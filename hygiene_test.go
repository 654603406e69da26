package rdsconn

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/go-sql-driver/mysql"
	"github.com/rdsconn/rdsconn/rdstest"
)

// hygieneMarker is in every token, password, secret value, AWS secret key
// and session token that TestSecretHygiene hands to rdsconn. It must never
// come back in an error or a log record.
const hygieneMarker = "QXleakQX"

// hygieneCreds are AWS credentials whose secret key and session token carry
// the marker. A token signed with them carries it too (in
// X-Amz-Security-Token), and the IAM endpoint accepts it: a working
// password that holds the marker.
var hygieneCreds = aws.Credentials{
	AccessKeyID:     "AKIDHYGIENE000000001",
	SecretAccessKey: "sk-" + hygieneMarker,
	SessionToken:    "st-" + hygieneMarker,
	Source:          "test",
}

// hygieneOutput is everything the loggers wrote: each record as slog's JSON
// handler writes it and again with every attribute printed with %+v.
type hygieneOutput struct {
	mu       sync.Mutex
	buf      bytes.Buffer
	messages map[string]int
}

// hygieneHandler records into a hygieneOutput at every level.
type hygieneHandler struct {
	out   *hygieneOutput
	json  slog.Handler
	attrs []slog.Attr
}

func (h *hygieneHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *hygieneHandler) Handle(ctx context.Context, r slog.Record) error {
	h.out.mu.Lock()
	defer h.out.mu.Unlock()
	h.out.messages[r.Message]++
	fmt.Fprintf(&h.out.buf, "%s %q", r.Level, r.Message)
	put := func(a slog.Attr) bool {
		fmt.Fprintf(&h.out.buf, " %s=%+v", a.Key, a.Value.Resolve().Any())
		return true
	}
	for _, a := range h.attrs {
		put(a)
	}
	r.Attrs(put)
	h.out.buf.WriteByte('\n')
	return h.json.Handle(ctx, r) // into the same buffer
}

func (h *hygieneHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &hygieneHandler{out: h.out, json: h.json.WithAttrs(attrs),
		attrs: append(slices.Clip(h.attrs), attrs...)}
}

func (h *hygieneHandler) WithGroup(name string) slog.Handler {
	return &hygieneHandler{out: h.out, json: h.json.WithGroup(name), attrs: h.attrs}
}

func newHygieneLogger() (*slog.Logger, *hygieneOutput) {
	out := &hygieneOutput{messages: map[string]int{}}
	jh := slog.NewJSONHandler(&out.buf, &slog.HandlerOptions{Level: slog.LevelDebug})
	return slog.New(&hygieneHandler{out: out, json: jh}), out
}

// hygieneRun collects what one scenario produced.
type hygieneRun struct {
	t      *testing.T
	log    *slog.Logger
	errs   []string // "scenario: %v / %+v / %#v of the error"
	values []string // other things a program may print
}

// err records an error in every form a program may print it.
func (h *hygieneRun) err(what string, err error) {
	if err == nil {
		return
	}
	h.errs = append(h.errs, fmt.Sprintf("%s: %v\n%+v\n%#v", what, err, err, err))
	for e := range errorTree(err) {
		h.errs = append(h.errs, fmt.Sprintf("%s (wrapped %T): %v / %+v", what, e, e, e))
	}
}

// errorTree yields err and everything it wraps.
func errorTree(err error) func(func(error) bool) {
	return func(yield func(error) bool) {
		var walk func(error) bool
		walk = func(e error) bool {
			if e == nil {
				return true
			}
			if !yield(e) {
				return false
			}
			switch u := e.(type) {
			case interface{ Unwrap() error }:
				return walk(u.Unwrap())
			case interface{ Unwrap() []error }:
				for _, c := range u.Unwrap() {
					if !walk(c) {
						return false
					}
				}
			}
			return true
		}
		walk(err)
	}
}

// connector makes a Connector that logs to the shared logger and records
// how it prints.
func (h *hygieneRun) connector(what string, cfg *mysql.Config, opts ...Option) *Connector {
	c := New(cfg, append([]Option{WithLogger(h.log)}, opts...)...)
	h.t.Cleanup(func() { c.Close() })
	h.values = append(h.values, fmt.Sprintf("%s: %v %+v %#v %+v", what, c, c, c, c.Plan()))
	return c
}

// connect runs Connect and Refresh and records their errors.
func (h *hygieneRun) connect(what string, c *Connector) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := c.Connect(ctx)
	if err == nil {
		conn.Close()
	}
	h.err(what+": Connect", err)
	info, err := c.Refresh(ctx)
	h.err(what+": Refresh", err)
	h.values = append(h.values, fmt.Sprintf("%s: Refresh %v %+v", what, info, info))
}

// hygieneWait waits until c has no fetch in flight, such as a background
// refresh that is to fail.
func hygieneWait(t *testing.T, c *Connector) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !faultCacheIdle(c.cache); {
		if time.Now().After(deadline) {
			t.Fatal("a fetch is still in flight after 5 s")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestSecretHygiene drives every failure path and every log event with the
// marker as the IAM token, the AWS secret key and session token, the DSN's
// password, the secret's password, a secret value that is not JSON, one
// without a password, a password file and a password function, and checks
// that the marker is in no error (as %v, %+v and %#v, and everything it
// wraps) and in no log record (slog's JSON handler and every attribute with
// %+v, at Debug level), and that every event rdsconn logs was seen.
func TestSecretHygiene(t *testing.T) {
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	logger, out := newHygieneLogger()
	h := &hygieneRun{t: t, log: logger}
	ctx := context.Background()

	ep := faultEndpoint(t, rdstest.IAMOptions{Credentials: []aws.Credentials{hygieneCreds}})
	goodToken, err := rdstest.TokenAt(ctx, ep.Endpoint(), ep.Region(), "app", hygieneCreds,
		time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(goodToken, hygieneMarker) {
		t.Fatalf("the test token %q does not carry the marker", goodToken)
	}
	badToken := ep.Endpoint() + "/?Action=connect&DBUser=app&X-Amz-Signature=" + hygieneMarker
	awsCfg := aws.Config{Credentials: credentials.NewStaticCredentialsProvider(
		hygieneCreds.AccessKeyID, hygieneCreds.SecretAccessKey, hygieneCreds.SessionToken)}
	clock := &fakeClock{t: time.Now()}

	// epConfig is a config for the endpoint, verified against its CA.
	epConfig := func(user, password string) *mysql.Config {
		cfg := mysql.NewConfig()
		cfg.User, cfg.Passwd, cfg.Addr, cfg.DBName = user, password, ep.Endpoint(), "shop"
		cfg.DialFunc, cfg.AllowCleartextPasswords = ep.DialContext, true
		return cfg
	}
	roots := WithRootCAs(ep.CA().Pool())

	// IAM: a token the server accepts (built by the SDK with the marked
	// credentials), one it refuses (access denied, a new token, refused
	// again), one for a server whose CA is not embedded, and a token
	// build that fails.
	h.connect("IAM accepted", h.connector("IAM accepted", epConfig("app", ""),
		WithIAM(), roots, WithAWSConfig(awsCfg)))
	marked := func(context.Context, string, string, string, aws.CredentialsProvider) (string,
		error) {
		return badToken, nil
	}
	h.connect("IAM refused", h.connector("IAM refused", epConfig("app", ""),
		WithIAM(), roots, WithAWSConfig(awsCfg), withTokenBuilder(marked)))
	h.connect("IAM unknown CA", h.connector("IAM unknown CA", epConfig("app", ""),
		WithIAM(), WithAWSConfig(awsCfg)))
	failing := func(context.Context, string, string, string, aws.CredentialsProvider) (string,
		error) {
		return "", errors.New("signing failed")
	}
	h.connect("IAM build fails", h.connector("IAM build fails", epConfig("app", ""),
		WithIAM(), roots, WithAWSConfig(awsCfg), withTokenBuilder(failing)))

	// IAM, stale if error: the token is kept past its refresh time while
	// building a new one fails.
	var fail atomic.Bool
	flaky := func(ctx context.Context, endpoint, region, user string,
		creds aws.CredentialsProvider) (string, error) {
		if fail.Load() {
			return "", errors.New("signing failed")
		}
		return goodToken, nil
	}
	c := h.connector("IAM stale", epConfig("app", ""), WithIAM(), roots, WithAWSConfig(awsCfg),
		withTokenBuilder(flaky), withClock(clock.Now))
	h.connect("IAM stale, first", c)
	fail.Store(true)
	clock.Advance(9 * time.Minute) // past the refresh-ahead point, before expiry
	h.connect("IAM stale, refresh fails", c)
	hygieneWait(t, c)

	// The DSN's own password, refused.
	h.connect("DSN password", h.connector("DSN password", epConfig("app", hygieneMarker), roots))

	// Secrets Manager: a value the server accepts, one it refuses (with an
	// AWSPENDING version it accepts, and without), values that are not
	// usable, and stale if error.
	sm := rdstest.NewSecretsManager("")
	t.Cleanup(sm.Close)
	secret := func(name, value string) *Connector {
		sm.PutSecret(name, value)
		return h.connector("secret "+name, epConfig("", ""), WithSecret(name), roots,
			WithAWSConfig(sm.AWSConfig()), withClock(clock.Now))
	}
	jsonSecret := func(user, password string) string {
		b, err := json.Marshal(map[string]string{"username": user, "password": password})
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	h.connect("secret accepted", secret("accepted", jsonSecret("app", goodToken)))
	h.connect("secret refused", secret("refused", jsonSecret("app", "pw-"+hygieneMarker)))
	rotating := secret("rotating", jsonSecret("app", "old-"+hygieneMarker))
	if _, err := sm.PutPending("rotating", jsonSecret("app", goodToken)); err != nil {
		t.Fatal(err)
	}
	h.connect("secret rotating", rotating)
	for name, value := range map[string]string{
		"not JSON":              "s3cret-" + hygieneMarker,
		"truncated JSON":        `{"username":"app","password":"` + hygieneMarker,
		"no password":           `{"username":"app","pass":"` + hygieneMarker + `"}`,
		"password not a string": `{"password":["` + hygieneMarker + `"]}`,
		"user not a string":     `{"password":"x","username":{"` + hygieneMarker + `":1}}`,
		"empty password":        `{"username":"` + hygieneMarker + `","password":""}`,
	} {
		h.connect("secret "+name, secret(strings.ReplaceAll(name, " ", "-"), value))
	}
	stale := secret("stale", jsonSecret("app", goodToken))
	h.connect("secret stale, first", stale)
	clock.Advance(secretTTL + time.Second)
	sm.FailNext(3, rdstest.FaultInternal)
	h.connect("secret stale, refresh fails", stale)
	hygieneWait(t, stale)

	// A password file and a password function, accepted, refused and then
	// failing.
	dir := t.TempDir()
	file := filepath.Join(dir, "password")
	if err := os.WriteFile(file, []byte(goodToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fc := h.connector("file", epConfig("app", ""), WithPasswordFile(file), roots,
		withClock(clock.Now))
	h.connect("file accepted", fc)
	os.WriteFile(file, []byte(hygieneMarker), 0o600)
	h.connect("file refused", h.connector("file refused", epConfig("app", ""),
		WithPasswordFile(file), roots))
	os.Remove(file)
	clock.Advance(fileTTL + time.Second)
	h.connect("file gone", fc)
	hygieneWait(t, fc)
	var fnFails atomic.Bool
	fn := func(context.Context) (string, error) {
		if fnFails.Load() {
			return "", errors.New("vault sealed")
		}
		return goodToken, nil
	}
	fnc := h.connector("func", epConfig("app", ""), WithPasswordFunc(fn), roots,
		withClock(clock.Now))
	h.connect("func accepted", fnc)
	fnFails.Store(true)
	clock.Advance(funcTTL + time.Second)
	h.connect("func fails", fnc)
	hygieneWait(t, fnc)
	h.connect("func refused", h.connector("func refused", epConfig("app", ""),
		WithPasswordFunc(func(context.Context) (string, error) { return hygieneMarker, nil }),
		roots))

	// A caller that gives up while the password is fetched.
	blocked := h.connector("deadline", epConfig("app", hygieneMarker), WithIAM(), roots,
		WithAWSConfig(awsCfg), withTokenBuilder(blockingBuilder(nil)))
	dctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	_, err = blocked.Connect(dctx)
	cancel()
	h.err("deadline", err)

	// Configuration errors for DSNs that hold the marker as their password.
	for _, dsn := range []string{
		"mysql://app:" + hygieneMarker + "@" + rdsHost + "/shop",
		"app:" + hygieneMarker + "@tcp(" + rdsHost + ":3306)",
		"app:" + hygieneMarker + "@tcp(" + rdsHost + ")/shop?rds-iam=maybe",
		"app:" + hygieneMarker + "@tcp(" + rdsHost + ")/shop?rds-bogus=1",
		"app:" + hygieneMarker + "@tcp(" + rdsHost + ")/shop?rds-iam=true&tls=false",
		"app:" + hygieneMarker + "@tcp(" + rdsHost + ")/shop?rds-iam-endpoint=https://x:1",
		"app:" + hygieneMarker + "@tcp(" + rdsHost + ")/shop?tls=nosuchconfig",
		"app:" + hygieneMarker + "@unix(/tmp/x.sock)/shop?rds-iam=true",
	} {
		cfg, err := ParseDSN(dsn)
		h.err("ParseDSN", err)
		if err == nil {
			c := h.connector("DSN config", cfg)
			h.connect("DSN config", c)
		}
	}

	check := func(what, s string) {
		if strings.Contains(s, hygieneMarker) {
			t.Errorf("%s holds the marker:\n%s", what, s)
		}
	}
	for _, s := range h.errs {
		check("an error", s)
	}
	for _, s := range h.values {
		check("a value a program may print", s)
	}
	out.mu.Lock()
	logs := out.buf.String()
	seen := out.messages
	out.mu.Unlock()
	for _, line := range strings.Split(logs, "\n") {
		check("a log record", line)
	}

	// Every event rdsconn logs was driven at least once.
	for _, msg := range loggedMessages(t) {
		if seen[msg] == 0 {
			t.Errorf("no scenario made rdsconn log %q; add one", msg)
		}
	}
	if testing.Verbose() {
		t.Logf("%d errors, %d log records checked", len(h.errs), strings.Count(logs, "\n")/2)
	}
}

// loggedMessages returns the message of every log call in the package's
// non-test files: calls of Debug, Info, Warn or Error on a *slog.Logger
// field named log whose first argument is a string literal.
func loggedMessages(t *testing.T) []string {
	t.Helper()
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) == 0 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || !slices.Contains([]string{"Debug", "Info", "Warn", "Error"}, sel.Sel.Name) {
				return true
			}
			if recv, ok := sel.X.(*ast.SelectorExpr); !ok || recv.Sel.Name != "log" {
				return true
			}
			if lit, ok := call.Args[0].(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if msg, err := strconv.Unquote(lit.Value); err == nil {
					msgs = append(msgs, msg)
				}
			}
			return true
		})
	}
	if len(msgs) < 4 {
		t.Fatalf("found only %d log calls in the package: %q", len(msgs), msgs)
	}
	return msgs
}

// goFiles returns the repository's non-test Go files, parsed.
func goFiles(t *testing.T) (*token.FileSet, map[string]*ast.File) {
	t.Helper()
	fset := token.NewFileSet()
	files := map[string]*ast.File{}
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" ||
				d.Name() == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		files[path] = f
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 10 {
		t.Fatalf("found only %d Go files", len(files))
	}
	return fset, files
}

// isTLSConfig reports whether e names the type tls.Config.
func isTLSConfig(e ast.Expr) bool {
	sel, ok := e.(*ast.SelectorExpr)
	if !ok || sel.Sel.Name != "Config" {
		return false
	}
	id, ok := sel.X.(*ast.Ident)
	return ok && id.Name == "tls"
}

func isFalse(e ast.Expr) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == "false"
}

// TestNoInsecureSkipVerify: no non-test Go file in the repository turns off
// certificate verification, in a tls.Config literal or by assignment.
func TestNoInsecureSkipVerify(t *testing.T) {
	fset, files := goFiles(t)
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.KeyValueExpr:
				if k, ok := n.Key.(*ast.Ident); ok && k.Name == "InsecureSkipVerify" &&
					!isFalse(n.Value) {
					t.Errorf("%s sets InsecureSkipVerify", fset.Position(n.Pos()))
				}
			case *ast.AssignStmt:
				for i, lhs := range n.Lhs {
					sel, ok := lhs.(*ast.SelectorExpr)
					if ok && sel.Sel.Name == "InsecureSkipVerify" &&
						(i >= len(n.Rhs) || !isFalse(n.Rhs[i])) {
						t.Errorf("%s sets InsecureSkipVerify", fset.Position(n.Pos()))
					}
				}
			}
			return true
		})
	}
}

// TestTLSConfigsMinVersion: every tls.Config that the repository's non-test
// code makes sets MinVersion to TLS 1.2 or 1.3; the auto-TLS config of
// every kind of RDS endpoint verifies the endpoint's name at TLS 1.2 at
// least; and a server that offers only TLS 1.1 is refused.
func TestTLSConfigsMinVersion(t *testing.T) {
	fset, files := goFiles(t)
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CompositeLit:
				if !isTLSConfig(n.Type) {
					return true
				}
				ok := false
				for _, elt := range n.Elts {
					kv, isKV := elt.(*ast.KeyValueExpr)
					if !isKV {
						continue
					}
					k, _ := kv.Key.(*ast.Ident)
					v, _ := kv.Value.(*ast.SelectorExpr)
					if k != nil && k.Name == "MinVersion" && v != nil &&
						(v.Sel.Name == "VersionTLS12" || v.Sel.Name == "VersionTLS13") {
						ok = true
					}
				}
				if !ok {
					t.Errorf("%s makes a tls.Config without MinVersion TLS 1.2 or 1.3",
						fset.Position(n.Pos()))
				}
			case *ast.CallExpr:
				if id, ok := n.Fun.(*ast.Ident); ok && id.Name == "new" && len(n.Args) == 1 &&
					isTLSConfig(n.Args[0]) {
					t.Errorf("%s makes a tls.Config with new, without MinVersion",
						fset.Position(n.Pos()))
				}
			}
			return true
		})
	}

	ca, err := rdstest.NewCA("rdsconn TLS version test CA")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, dsn string
		opts      []Option
	}{
		{"instance", "app:pw@tcp(" + rdsHost + ")/shop", nil},
		{"cluster", "app:pw@tcp(app.cluster-abc123.eu-west-1.rds.amazonaws.com)/shop", nil},
		{"reader", "app:pw@tcp(app.cluster-ro-abc123.eu-west-1.rds.amazonaws.com)/shop", nil},
		{"proxy", "app@tcp(px1.proxy-abc123.us-east-1.rds.amazonaws.com)/shop",
			[]Option{WithIAM()}},
		{"China", "app@tcp(db1.abc123.rds.cn-north-1.amazonaws.com.cn)/shop",
			[]Option{WithIAM()}},
		{"GovCloud", "app@tcp(db1.abc123.us-gov-west-1.rds.amazonaws.com)/shop",
			[]Option{WithIAM()}},
		{"tunnel", "app@tcp(127.0.0.1:13306)/shop", []Option{WithIAMEndpoint(rdsHost + ":3306")}},
		{"own roots", "app@tcp(" + rdsHost + ")/shop",
			[]Option{WithIAM(), WithRootCAs(ca.Pool())}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustParseDSN(t, tt.dsn)
			c := New(cfg, tt.opts...)
			p := c.Plan()
			if p.Err != nil || !p.AutoTLS {
				t.Fatalf("plan %+v, want auto TLS", p)
			}
			tc := c.base.TLS
			if tc.MinVersion < tls.VersionTLS12 || tc.InsecureSkipVerify || tc.RootCAs == nil ||
				tc.ServerName != p.ServerName || tc.VerifyPeerCertificate != nil {
				t.Fatalf("auto TLS config %+v", tc)
			}
		})
	}

	// A handshake with the auto-TLS config against servers that offer TLS
	// 1.1 at most, and TLS 1.2.
	cert, err := ca.ServerCert(rdstest.ECDSAP256, rdsHost)
	if err != nil {
		t.Fatal(err)
	}
	c := New(mustParseDSN(t, "app@tcp("+rdsHost+")/shop"), WithIAM(), WithRootCAs(ca.Pool()))
	for _, top := range []uint16{tls.VersionTLS11, tls.VersionTLS12} {
		server := &tls.Config{Certificates: []tls.Certificate{cert},
			MinVersion: tls.VersionTLS10, MaxVersion: top}
		l, err := tls.Listen("tcp", "127.0.0.1:0", server)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			if s, err := l.Accept(); err == nil {
				s.(*tls.Conn).Handshake()
				s.Close()
			}
		}()
		conn, err := net.DialTimeout("tcp", l.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		client := tls.Client(conn, c.base.TLS.Clone())
		err = client.Handshake()
		client.Close()
		<-done
		l.Close()
		if top < tls.VersionTLS12 && err == nil {
			t.Errorf("handshake with a server offering TLS 1.1 at most succeeded")
		}
		if top >= tls.VersionTLS12 && err != nil {
			t.Errorf("handshake with a TLS 1.2 server: %v", err)
		}
	}
}
