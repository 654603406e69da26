package main

import (
	"context"
	"crypto/tls"
	"database/sql"
	"strings"
	"testing"

	"github.com/go-sql-driver/mysql"

	"github.com/rdsconn/rdsconn/rdstest"
)

// loginWith logs in to the fixture's IAM endpoint as app with password,
// over TLS, as the mysql client would with the token command's output.
func loginWith(t *testing.T, f *fixture, password string) error {
	t.Helper()
	cfg := mysql.NewConfig()
	cfg.User, cfg.Passwd, cfg.Net, cfg.Addr = "app", password, "tcp", f.ep.Endpoint()
	cfg.TLS = &tls.Config{RootCAs: f.ep.CA().Pool(), ServerName: f.ep.Hostname()}
	cfg.AllowCleartextPasswords = true
	cfg.DialFunc = f.ep.DialContext
	c, err := mysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	return db.PingContext(context.Background())
}

func TestToken(t *testing.T) {
	f := newFixture(t, rdstest.IAMOptions{})
	r := f.run(t, "token", iamDSN)
	if r.code != 0 {
		t.Fatalf("exit status %d\n%s", r.code, r.stderr)
	}
	token := strings.TrimSpace(r.stdout)
	if strings.Count(r.stdout, "\n") != 1 ||
		!strings.HasPrefix(token, "db1.abc123.us-east-1.rds.amazonaws.com:3306?") {
		t.Fatalf("stdout is not one token for the endpoint: %q", r.stdout)
	}
	if err := loginWith(t, f, token); err != nil {
		t.Fatalf("the endpoint refuses the printed token: %v", err)
	}
	if st := f.ep.Stats(); st.Accepted != 1 || st.Tokens[0].Region != "us-east-1" {
		t.Fatalf("endpoint stats %+v", st)
	}
}

func TestTokenEnv(t *testing.T) {
	f := newFixture(t, rdstest.IAMOptions{})
	r := f.run(t, "token", "-env", "-ca-bundle", f.caFile, iamDSN)
	if r.code != 0 {
		t.Fatalf("exit status %d\n%s", r.code, r.stderr)
	}
	vars := map[string]string{}
	for _, line := range strings.Split(r.stdout, "\n") {
		if kv, ok := strings.CutPrefix(line, "export "); ok {
			k, v, _ := strings.Cut(kv, "=")
			vars[k] = strings.Trim(v, "'")
		}
	}
	want := map[string]string{
		"MYSQL_HOST":                       "db1.abc123.us-east-1.rds.amazonaws.com",
		"MYSQL_TCP_PORT":                   "3306",
		"LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN": "Y",
		"RDSCONN_MYSQL_ARGS": "--user=app --ssl-mode=VERIFY_IDENTITY --ssl-ca=" + f.caFile +
			" --enable-cleartext-plugin",
		"RDSCONN_MARIADB_ARGS": "--user=app --ssl --ssl-ca=" + f.caFile +
			" --ssl-verify-server-cert",
	}
	for k, v := range want {
		if vars[k] != v {
			t.Errorf("%s=%q, want %q\n%s", k, vars[k], v, r.stdout)
		}
	}
	if err := loginWith(t, f, vars["MYSQL_PWD"]); err != nil {
		t.Fatalf("the endpoint refuses MYSQL_PWD: %v", err)
	}
}

func TestTokenFails(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T)
		args  []string
		code  int
	}{
		{"DSN written as a URL", nil, []string{"mysql://app@db1/shop"}, stepEndpoint},
		{"no user", nil, []string{"tcp(db1.abc123.us-east-1.rds.amazonaws.com)/shop"},
			stepEndpoint},
		{"no region", nil, []string{cnameDSN + "?tls=true"}, stepRegion},
		{"no credentials", func(t *testing.T) {
			t.Setenv("AWS_ACCESS_KEY_ID", "")
			t.Setenv("AWS_SECRET_ACCESS_KEY", "")
		}, []string{iamDSN}, stepCredentials},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, rdstest.IAMOptions{})
			if tt.setup != nil {
				tt.setup(t)
			}
			r := f.run(t, append([]string{"token"}, tt.args...)...)
			if r.code != tt.code || r.stdout != "" ||
				!strings.HasPrefix(r.stderr, "rdsconn token: ") {
				t.Fatalf("exit status %d (want %d), stdout %q, stderr %q", r.code, tt.code,
					r.stdout, r.stderr)
			}
			assertNoSecrets(t, r.stdout)
		})
	}
}
