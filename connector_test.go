package rdsconn

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/go-sql-driver/mysql"
)

const rdsHost = "db1.abc123.us-east-1.rds.amazonaws.com"

// countDials makes cfg's dials fail and counts them, to prove that nothing
// is dialled.
func countDials(cfg *mysql.Config) *atomic.Int32 {
	var n atomic.Int32
	cfg.DialFunc = func(context.Context, string, string) (net.Conn, error) {
		n.Add(1)
		return nil, errors.New("dial refused by test")
	}
	return &n
}

func mustParseDSN(t *testing.T, dsn string) *mysql.Config {
	t.Helper()
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		t.Fatalf("ParseDSN(%q): %v", dsn, err)
	}
	return cfg
}

// TestConfigErrors: every configuration problem comes back from Connect as
// an ErrConfig that says what to change, and nothing is dialled.
func TestConfigErrors(t *testing.T) {
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	iamDSN := "app@tcp(" + rdsHost + ":3306)/shop"
	tests := []struct {
		name string
		dsn  string
		opts []Option
		want string // a piece of the message that says what to change
	}{
		{"two password sources", iamDSN, []Option{WithIAM(), WithSecret("prod/app")},
			"more than one password source (WithIAM, WithSecret)"},
		{"K08 IAM with tls=false", iamDSN + "?tls=false", []Option{WithIAM()}, "tls=false"},
		{"K08 IAM with tls=skip-verify", iamDSN + "?tls=skip-verify", []Option{WithIAM()},
			"tls=skip-verify"},
		{"K08 IAM with tls=preferred", iamDSN + "?tls=preferred", []Option{WithIAM()},
			"tls=preferred"},
		{"IAM with auto TLS off", iamDSN, []Option{WithIAM(), WithoutAutoTLS()}, "auto TLS is off"},
		{"IAM on a non-RDS host without TLS", "app@tcp(db.internal.example.com)/shop",
			[]Option{WithIAM()}, "not an RDS endpoint name"},
		{"IAM without a user", "tcp(" + rdsHost + ")/shop", []Option{WithIAM()},
			"needs the database user"},
		{"K02 endpoint given as a URL", iamDSN,
			[]Option{WithIAMEndpoint("https://" + rdsHost + ":3306")}, "give it as host:port"},
		{"endpoint without a port", iamDSN, []Option{WithIAMEndpoint(rdsHost)}, "not host:port"},
		{"endpoint with a bad port", iamDSN, []Option{WithIAMEndpoint(rdsHost + ":99999")},
			"invalid port"},
		{"malformed secret ARN", iamDSN,
			[]Option{WithSecret("arn:aws:secretsmanager:us-east-1:123456789012:db-password")},
			"not a Secrets Manager secret ARN"},
		{"ARN of another service", iamDSN,
			[]Option{WithSecret("arn:aws:s3:us-east-1:123456789012:secret:x")},
			"not a Secrets Manager secret ARN"},
		{"empty secret id", iamDSN, []Option{WithSecret("")}, "empty secret id"},
		{"empty password file path", iamDSN, []Option{WithPasswordFile("")}, "empty path"},
		{"nil password function", iamDSN, []Option{WithPasswordFunc(nil)}, "nil function"},
		{"nil root pool", iamDSN, []Option{WithRootCAs(nil)}, "nil pool"},
		{"unknown rds- parameter", iamDSN + "?rds-iam=true&rds-regoin=us-east-1", nil,
			"unknown DSN parameter rds-regoin"},
		{"malformed region", iamDSN, []Option{WithIAM(), WithRegion("us east 1")},
			"not an AWS region name"},
		{"rds-region malformed", iamDSN + "?rds-iam=true&rds-region=useast1", nil,
			"not an AWS region name"},
		{"rds-iam not a boolean", iamDSN + "?rds-iam=yes", nil, "not a boolean"},
		{"rds-iam with tls=false", iamDSN + "?rds-iam=true&tls=false", nil, "tls=false"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustParseDSN(t, tt.dsn)
			dials := countDials(cfg)
			c := New(cfg, tt.opts...)
			for range 2 { // every Connect, not only the first
				_, err := c.Connect(context.Background())
				if !errors.Is(err, ErrConfig) {
					t.Fatalf("Connect error = %v, want ErrConfig", err)
				}
				if !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("error %q does not say %q", err, tt.want)
				}
				if !strings.HasPrefix(err.Error(), "rdsconn: ") {
					t.Fatalf("error %q does not start with rdsconn: ", err)
				}
			}
			if n := dials.Load(); n != 0 {
				t.Fatalf("dialled %d times despite a configuration error", n)
			}
		})
	}
}

func TestNewNilConfig(t *testing.T) {
	_, err := New(nil, WithIAM()).Connect(context.Background())
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "mysql.NewConfig") {
		t.Fatalf("err = %v", err)
	}
}

// TestNewCopiesConfig: the caller's config and TLS config stay as they were.
func TestNewCopiesConfig(t *testing.T) {
	cfg := mustParseDSN(t, "app@tcp(localhost:3306)/shop?rds-iam-endpoint="+rdsHost+":3306")
	userTLS := &tls.Config{MinVersion: tls.VersionTLS12}
	cfg.TLS = userTLS
	before := *cfg
	New(cfg)
	if cfg.TLS != userTLS || userTLS.ServerName != "" || cfg.AllowCleartextPasswords ||
		cfg.Params["rds-iam-endpoint"] == "" || cfg.Passwd != before.Passwd {
		t.Fatal("New modified the caller's config")
	}
}

// TestAutoTLSDecision covers which hosts get auto TLS (K08, K10, K15) and
// that what the caller configured wins.
func TestAutoTLSDecision(t *testing.T) {
	tests := []struct {
		name       string
		dsn        string
		opts       []Option
		wantServer string // "" for no auto TLS
	}{
		{"K08 IAM, RDS name, no parameters", "app@tcp(" + rdsHost + ")/shop",
			[]Option{WithIAM()}, rdsHost},
		{"RDS name without IAM", "app:pw@tcp(" + rdsHost + ")/shop", nil, rdsHost},
		{"K15 proxy endpoint", "app@tcp(px1.proxy-abc123.us-east-1.rds.amazonaws.com)/shop",
			[]Option{WithIAM()}, "px1.proxy-abc123.us-east-1.rds.amazonaws.com"},
		{"upper case name", "app@tcp(DB1.ABC123.US-EAST-1.RDS.AMAZONAWS.COM.)/shop",
			[]Option{WithIAM()}, rdsHost},
		{"tunnel with WithIAMEndpoint", "app@tcp(127.0.0.1:13306)/shop",
			[]Option{WithIAMEndpoint(rdsHost + ":3306")}, rdsHost},
		{"K10 look-alike", "app:pw@tcp(x.rds.amazonaws.com.attacker.example)/shop", nil, ""},
		{"non-RDS host", "app:pw@tcp(db.internal.example.com)/shop", nil, ""},
		{"WithoutAutoTLS", "app:pw@tcp(" + rdsHost + ")/shop", []Option{WithoutAutoTLS()}, ""},
		{"rds-auto-tls=false", "app:pw@tcp(" + rdsHost + ")/shop?rds-auto-tls=false", nil, ""},
		{"tls parameter wins", "app:pw@tcp(" + rdsHost + ")/shop?tls=false", nil, ""},
		{"tls=true on an RDS name verifies against the RDS roots",
			"app@tcp(" + rdsHost + ")/shop?tls=true", []Option{WithIAM()}, rdsHost},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(mustParseDSN(t, tt.dsn), tt.opts...)
			if c.err != nil {
				t.Fatalf("configuration error: %v", c.err)
			}
			if c.tlsHost != tt.wantServer {
				t.Fatalf("auto TLS server name = %q, want %q", c.tlsHost, tt.wantServer)
			}
			if tt.wantServer == "" {
				return
			}
			got := c.base.TLS
			if got == nil || got.ServerName != tt.wantServer || got.InsecureSkipVerify ||
				got.MinVersion < tls.VersionTLS12 || got.RootCAs == nil {
				t.Fatalf("auto TLS config = %+v", got)
			}
		})
	}
}

// TestIAMTurnsOnClearText covers K08: IAM turns on the clear-text plugin.
func TestIAMTurnsOnClearText(t *testing.T) {
	c := New(mustParseDSN(t, "app@tcp("+rdsHost+")/shop"), WithIAM())
	if c.err != nil || !c.base.AllowCleartextPasswords {
		t.Fatalf("err %v, AllowCleartextPasswords %v", c.err,
			c.base != nil && c.base.AllowCleartextPasswords)
	}
	plain := New(mustParseDSN(t, "app:pw@tcp("+rdsHost+")/shop"))
	if plain.base.AllowCleartextPasswords {
		t.Fatal("clear-text passwords turned on without IAM")
	}
}

// TestTokenEndpoint covers K01: the token is signed for host:port with
// go-sql-driver's default port when the DSN names none.
func TestTokenEndpoint(t *testing.T) {
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	tests := []struct {
		name, dsn string
		opts      []Option
		endpoint  string
		region    string
	}{
		{"K01 no port", "app@tcp(" + rdsHost + ")/shop", nil, rdsHost + ":3306", "us-east-1"},
		{"K01 explicit port", "app@tcp(" + rdsHost + ":3307)/shop", nil, rdsHost + ":3307", "us-east-1"},
		{"IAM endpoint for a tunnel", "app@tcp(127.0.0.1:13306)/shop",
			[]Option{WithIAMEndpoint("app.cluster-abc123.eu-west-1.rds.amazonaws.com:3306")},
			"app.cluster-abc123.eu-west-1.rds.amazonaws.com:3306", "eu-west-1"},
		{"WithRegion wins", "app@tcp(" + rdsHost + ")/shop", []Option{WithRegion("us-west-2")},
			rdsHost + ":3306", "us-west-2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var gotEndpoint, gotRegion, gotUser string
			builder := func(_ context.Context, endpoint, region, user string,
				_ awsCredentialsProvider) (string, error) {
				gotEndpoint, gotRegion, gotUser = endpoint, region, user
				return "token", nil
			}
			cfg := mustParseDSN(t, tt.dsn)
			countDials(cfg)
			opts := append([]Option{WithIAM(), withTokenBuilder(builder),
				WithAWSConfig(staticAWSConfig("AKIDEXAMPLE", "secret", ""))}, tt.opts...)
			New(cfg, opts...).Connect(context.Background())
			if gotEndpoint != tt.endpoint || gotRegion != tt.region || gotUser != "app" {
				t.Fatalf("token for %q in %q as %q; want %q in %q as app",
					gotEndpoint, gotRegion, gotUser, tt.endpoint, tt.region)
			}
		})
	}
}
