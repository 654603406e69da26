package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/rdsconn/rdsconn/rdstest"
)

const (
	// iamEndpoint is the RDS name the IAM endpoint poses as.
	iamEndpoint = rdstest.DefaultEndpoint
	// cnameHost is an alias that tests dial to reach the IAM endpoint.
	cnameHost = "db.internal.example.com"
	// refusingEndpoint is an RDS name where nothing listens.
	refusingEndpoint = "db9.abc123.us-east-1.rds.amazonaws.com:3306"
	// testAccount is the account STS reports.
	testAccount = "123456789012"
	// testSecretID names the secret in the Secrets Manager fake.
	testSecretID = "prod/shop/app"
)

// testKeys are the AWS credentials the tests put in the environment. Their
// secret parts must never appear in the command's output.
var testKeys = aws.Credentials{
	AccessKeyID:     "AKIDCHECKTEST0000001",
	SecretAccessKey: "secret-access-key-must-not-leak-7Qx",
	SessionToken:    "session-token-must-not-leak-9Zw",
}

// Passwords in the tests' secrets. They must never appear in the output.
const (
	passwordA = "p@ss:w/rd?&#%-A-must-not-leak"
	passwordB = "p@ss:w/rd?&#%-B-must-not-leak"
	passwordC = "p@ss:w/rd?&#%-C-must-not-leak"
)

// neverShown are strings no output may contain: the secrets above, and
// what every IAM token carries.
var neverShown = []string{testKeys.SecretAccessKey, testKeys.SessionToken, passwordA,
	passwordB, passwordC, "X-Amz-Signature", "X-Amz-Security-Token", "Action=connect"}

// stsFake answers STS GetCallerIdentity, with a Date header that can be
// set apart from the local clock, or with an error.
type stsFake struct {
	srv *httptest.Server

	mu    sync.Mutex
	skew  time.Duration // AWS's clock minus the local one
	fault string        // error code to answer with, if any
	calls int
}

func newSTSFake(t *testing.T) *stsFake {
	f := &stsFake{}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *stsFake) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	skew, fault := f.skew, f.fault
	f.calls++
	f.mu.Unlock()
	if err := r.ParseForm(); err != nil || r.PostForm.Get("Action") != "GetCallerIdentity" {
		http.Error(w, "only GetCallerIdentity", http.StatusBadRequest)
		return
	}
	w.Header().Set("Date", time.Now().Add(skew).UTC().Format(http.TimeFormat))
	w.Header().Set("Content-Type", "text/xml")
	if fault != "" {
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprintf(w, `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
<Error><Type>Sender</Type><Code>%s</Code><Message>injected by the test</Message></Error>
<RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>`, fault)
		return
	}
	fmt.Fprintf(w, `<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
<GetCallerIdentityResult>
<Arn>arn:aws:sts::%[1]s:assumed-role/app-role/check</Arn>
<UserId>AROAEXAMPLE:check</UserId>
<Account>%[1]s</Account>
</GetCallerIdentityResult>
<ResponseMetadata><RequestId>00000000-0000-0000-0000-000000000001</RequestId></ResponseMetadata>
</GetCallerIdentityResponse>`, testAccount)
}

// fixture is everything check talks to, on loopback: the IAM endpoint, the
// password endpoint, STS and Secrets Manager, with the AWS environment
// pointing at them.
type fixture struct {
	ep     *rdstest.IAMEndpoint
	pw     *rdstest.PasswordEndpoint
	sts    *stsFake
	sm     *rdstest.SecretsManager
	caFile string
	// passwordFile holds passwordA and a newline.
	passwordFile string
}

// newFixture starts the fakes and sets the AWS environment for them, with
// the region left for the endpoint name to decide.
func newFixture(t *testing.T, opts rdstest.IAMOptions) *fixture {
	t.Helper()
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	f := &fixture{sts: newSTSFake(t), sm: rdstest.NewSecretsManager("us-east-1")}
	t.Cleanup(f.sm.Close)

	if opts.Users == nil {
		opts.Users = []string{"app"}
	}
	if opts.Credentials == nil {
		opts.Credentials = []aws.Credentials{testKeys}
	}
	ep, err := rdstest.NewIAMEndpoint(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ep.Close() })
	f.ep = ep

	f.pw, err = rdstest.NewPasswordEndpoint(rdstest.PasswordOptions{
		Endpoint: demoSecretEndpoint,
		CA:       ep.CA(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.pw.Close() })

	dir := t.TempDir()
	f.caFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(f.caFile, ep.CA().CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	f.passwordFile = filepath.Join(dir, "password")
	if err := os.WriteFile(f.passwordFile, []byte(passwordA+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID":                testKeys.AccessKeyID,
		"AWS_SECRET_ACCESS_KEY":            testKeys.SecretAccessKey,
		"AWS_SESSION_TOKEN":                testKeys.SessionToken,
		"AWS_REGION":                       "",
		"AWS_DEFAULT_REGION":               "",
		"AWS_PROFILE":                      "",
		"AWS_CONFIG_FILE":                  filepath.Join(dir, "no-config"),
		"AWS_SHARED_CREDENTIALS_FILE":      filepath.Join(dir, "no-credentials"),
		"AWS_ENDPOINT_URL":                 "",
		"AWS_ENDPOINT_URL_STS":             f.sts.srv.URL,
		"AWS_ENDPOINT_URL_SECRETS_MANAGER": f.sm.URL(),
		"AWS_MAX_ATTEMPTS":                 "1",
	} {
		t.Setenv(k, v)
	}
	return f
}

// dial reaches the IAM endpoint at its RDS name and at cnameHost, and the
// password server at its RDS name.
func (f *fixture) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, _ := net.SplitHostPort(addr)
	switch {
	case strings.EqualFold(addr, iamEndpoint) || host == cnameHost && port == "3306":
		var d net.Dialer
		return d.DialContext(ctx, "tcp", f.ep.Addr())
	case strings.EqualFold(addr, demoSecretEndpoint):
		return f.pw.DialContext(ctx, network, addr)
	case strings.EqualFold(addr, refusingEndpoint):
		refusing, err := rdstest.RefusingAddr()
		if err != nil {
			return nil, err
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", refusing)
	}
	return nil, fmt.Errorf("test dialer: nothing at %s", addr)
}

// result is the outcome of one run of the command.
type result struct {
	code           int
	stdout, stderr string
}

// run runs the command in-process against the fixture and checks that its
// output holds no secret.
func (f *fixture) run(t *testing.T, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	e := env{dial: f.dial, now: time.Now}
	code := run(context.Background(), args, &stdout, &stderr, e)
	r := result{code, stdout.String(), stderr.String()}
	assertNoSecrets(t, r.stderr)
	if len(args) == 0 || args[0] != "token" {
		assertNoSecrets(t, r.stdout)
	}
	return r
}

func assertNoSecrets(t *testing.T, out string) {
	t.Helper()
	for _, s := range neverShown {
		if strings.Contains(out, s) {
			t.Errorf("output shows %q:\n%s", s, out)
		}
	}
}

// stepLine matches the line of a step with its status.
func stepLine(n int, status string) *regexp.Regexp {
	return regexp.MustCompile(fmt.Sprintf(`(?m)^%d %-12s %s`, n, regexp.QuoteMeta(stepNames[n]),
		regexp.QuoteMeta(status)))
}

// adviceLines returns the advice lines of the output.
func adviceLines(out string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if a, ok := strings.CutPrefix(strings.TrimSpace(l), "advice: "); ok {
			lines = append(lines, a)
		}
	}
	return lines
}
