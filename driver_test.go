package rdsconn

import (
	"context"
	"database/sql"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/go-sql-driver/mysql"
	"github.com/rdsconn/rdsconn/rdstest"
)

// TestDriverDSNEndToEnd opens a database by driver name and DSN only, with
// the default AWS config from the environment and the SDK's own
// BuildAuthToken, against the IAM-checking endpoint.
func TestDriverDSNEndToEnd(t *testing.T) {
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_ACCESS_KEY_ID", credsA.AccessKeyID)
	t.Setenv("AWS_SECRET_ACCESS_KEY", credsA.SecretAccessKey)
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_CONFIG_FILE", "/nonexistent")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_REGION", "eu-west-1") // the endpoint name must win over this

	ep, err := rdstest.NewIAMEndpoint(rdstest.IAMOptions{Users: []string{"app"},
		Credentials: []aws.Credentials{credsA}})
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	mysql.RegisterDialContext("rdstest-driver", func(ctx context.Context,
		addr string) (net.Conn, error) {
		return ep.DialContext(ctx, "tcp", addr)
	})
	if err := mysql.RegisterTLSConfig("rdstest-driver", ep.ClientTLSConfig()); err != nil {
		t.Fatal(err)
	}
	defer mysql.DeregisterTLSConfig("rdstest-driver")

	dsn := "app@rdstest-driver(" + ep.Endpoint() + ")/shop?tls=rdstest-driver" +
		"&rds-iam-endpoint=" + ep.Endpoint()
	db, err := sql.Open(DriverName, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var user string
	if err := db.QueryRow("SELECT CURRENT_USER()").Scan(&user); err != nil {
		t.Fatalf("query through the rdsmysql driver: %v", err)
	}
	st := ep.Stats()
	if st.Accepted != 1 || st.Tokens[0].Region != "us-east-1" {
		t.Fatalf("stats %+v, want one token accepted, signed for the endpoint's us-east-1", st)
	}
}

func TestDriverDSNErrors(t *testing.T) {
	tests := []struct {
		name, dsn, want string
	}{
		{"K09 URL form", "mysql://app:x@host/shop", "written as a URL"},
		{"K09 URL form, upper case", "MySQL://app:x@host/shop", "written as a URL"},
		{"no slash", "app:hunter2@tcp(host:3306)", "parsing the DSN"},
		{"slash in an rds- value", "app@tcp(host:3306)/shop?rds-secret=prod/app", "%2F"},
		{"unknown rds- parameter", "app@tcp(host:3306)/shop?rds-foo=1", "unknown DSN parameter rds-foo"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, err := sql.Open(DriverName, tt.dsn)
			if err == nil {
				err = db.Ping()
				db.Close()
			}
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrConfig saying %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), ":x@") {
				t.Fatalf("error %q repeats the password", err)
			}
		})
	}
}

// TestDSNParamsRemoved: the rds- parameters become options and never reach
// go-sql-driver, which would send them to the server as session variables.
func TestDSNParamsRemoved(t *testing.T) {
	cfg, err := ParseDSN("app@tcp(" + rdsHost + ")/shop?rds-iam=true&rds-region=us-west-2" +
		"&rds-auto-tls=true&sql_mode=ANSI")
	if err != nil {
		t.Fatal(err)
	}
	c := New(cfg)
	if c.err != nil {
		t.Fatal(c.err)
	}
	for k := range c.base.Params {
		if strings.HasPrefix(k, "rds-") {
			t.Errorf("parameter %s left in the config", k)
		}
	}
	if c.base.Params["sql_mode"] != "ANSI" {
		t.Error("a server parameter was dropped")
	}
	if _, ok := c.source.(*iamSource); !ok || c.aws.regions.option != "us-west-2" {
		t.Fatalf("rds-iam and rds-region not applied: source %T", c.source)
	}
}

func TestPlan(t *testing.T) {
	c := New(mustParseDSN(t, "app@tcp(127.0.0.1:13306)/shop"),
		WithIAMEndpoint("px1.proxy-abc123.us-west-2.rds.amazonaws.com:3306"))
	p := c.Plan()
	if p.Err != nil || p.Endpoint != "px1.proxy-abc123.us-west-2.rds.amazonaws.com:3306" ||
		p.Addr != "127.0.0.1:13306" || p.Kind != kindProxy || !p.TLS || !p.AutoTLS ||
		!p.EmbeddedRoots || p.ServerName != "px1.proxy-abc123.us-west-2.rds.amazonaws.com" ||
		!strings.Contains(p.Source, "IAM token") {
		t.Fatalf("plan %+v", p)
	}
	bad := New(mustParseDSN(t, "app@tcp("+rdsHost+")/shop?tls=false"), WithIAM()).Plan()
	if !errors.Is(bad.Err, ErrConfig) {
		t.Fatalf("plan error %v, want ErrConfig", bad.Err)
	}
}
