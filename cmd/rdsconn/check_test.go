package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rdsconn/rdsconn/rdstest"
)

const (
	iamDSN    = "app@tcp(db1.abc123.us-east-1.rds.amazonaws.com:3306)/shop"
	cnameDSN  = "app@tcp(" + cnameHost + ":3306)/shop"
	secretDSN = "tcp(db2.abc123.us-east-1.rds.amazonaws.com:3306)/shop"
)

// secretValue is a secret in the form RDS writes.
func secretValue(password string) string {
	b, _ := json.Marshal(map[string]any{"engine": "mysql", "port": 3306, "username": "app",
		"password": password})
	return string(b)
}

func TestCheckPasses(t *testing.T) {
	tests := []struct {
		name  string
		setup func(f *fixture)
		args  func(f *fixture) []string
		want  []string // in the output
		skip  []int    // steps that do not apply
	}{
		{
			name: "IAM with flags",
			args: func(f *fixture) []string {
				return []string{"-iam", "-ca-bundle", f.caFile, iamDSN}
			},
			want: []string{"an RDS instance endpoint", "us-east-1, from the endpoint name",
				"on (auto TLS for an RDS endpoint name)", "account " + testAccount,
				"IAM token built for user \"app\"", "as app@% to MySQL 8.0.39 over TLSv1."},
		},
		{
			name: "IAM with rds- DSN parameters and flags after the DSN",
			args: func(f *fixture) []string {
				return []string{iamDSN + "?rds-iam=true&rds-region=us-east-1", "-ca-bundle",
					f.caFile}
			},
			want: []string{"us-east-1, from -region or rds-region", "IAM token built"},
		},
		{
			name: "IAM through a CNAME fixed with -iam-endpoint",
			args: func(f *fixture) []string {
				return []string{"-iam-endpoint", iamEndpoint, "-ca-bundle", f.caFile, cnameDSN}
			},
			want: []string{"dialled at " + cnameHost + ":3306",
				"server name db1.abc123.us-east-1.rds.amazonaws.com"},
		},
		{
			name: "secret",
			setup: func(f *fixture) {
				f.pw.SetPassword("app", passwordA)
				f.sm.PutSecret(testSecretID, secretValue(passwordA))
			},
			args: func(f *fixture) []string {
				return []string{"-secret", testSecretID, "-ca-bundle", f.caFile, secretDSN}
			},
			want: []string{"secret fetched: version", "(AWSCURRENT), user \"app\"",
				"keys engine, password, port, username", "as app@%"},
		},
		{
			name:  "password file",
			setup: func(f *fixture) { f.pw.SetPassword("app", passwordA) },
			args: func(f *fixture) []string {
				return []string{"-password-file", f.passwordFile, "-ca-bundle", f.caFile,
					"app@" + secretDSN}
			},
			want: []string{"read from the password file", "as app@%"},
			skip: []int{stepRegion, stepCredentials},
		},
	}
	for _, tt := range tests {
		for _, verbose := range []bool{false, true} {
			name := tt.name
			if verbose {
				name += " with -v"
			}
			t.Run(name, func(t *testing.T) {
				f := newFixture(t, rdstest.IAMOptions{})
				if tt.setup != nil {
					tt.setup(f)
				}
				args := append([]string{"check"}, tt.args(f)...)
				if verbose {
					args = append(args, "-v")
				}
				r := f.run(t, args...)
				if r.code != 0 {
					t.Fatalf("exit status %d, want 0\n%s%s", r.code, r.stdout, r.stderr)
				}
				for n := stepEndpoint; n <= stepConnection; n++ {
					status := statusOK
					if slices.Contains(tt.skip, n) {
						status = statusSkip
					}
					if !stepLine(n, status).MatchString(r.stdout) {
						t.Errorf("step %d is not %s:\n%s", n, status, r.stdout)
					}
				}
				for _, w := range tt.want {
					if !strings.Contains(r.stdout, w) {
						t.Errorf("output lacks %q:\n%s", w, r.stdout)
					}
				}
				if verbose && !strings.Contains(r.stdout, "server_version: 8.0.39") {
					t.Errorf("-v shows no facts:\n%s", r.stdout)
				}
			})
		}
	}
}

// TestCheckDiagnoses runs check into each cause it diagnoses and asserts
// the step that fails, the exit status, the cause and the advice.
func TestCheckDiagnoses(t *testing.T) {
	tests := []struct {
		name   string
		opts   rdstest.IAMOptions
		setup  func(t *testing.T, f *fixture)
		args   func(f *fixture) []string
		step   int
		cause  string
		advice string
		warn   int // a step that must warn before the failure, if any
	}{
		{
			name: "IAM identity without rds-db:connect",
			setup: func(_ *testing.T, f *fixture) {
				f.ep.RevokeCredentials(testKeys.AccessKeyID)
			},
			args: iamArgs,
			step: stepConnection, cause: causeIAMDenied,
			advice: "allow arn:aws:sts::123456789012:assumed-role/app-role/check rds-db:connect " +
				"on arn:aws:rds-db:us-east-1:123456789012:dbuser:db-RESOURCEID/app",
		},
		{
			name:  "user not created WITH AWSAuthenticationPlugin",
			setup: func(_ *testing.T, f *fixture) { f.ep.RemoveUser("app") },
			args:  iamArgs,
			step:  stepConnection, cause: causeIAMDenied,
			advice: "CREATE USER 'app'@'%' IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS'",
		},
		{
			name: "token for a CNAME, with tls=true",
			args: func(f *fixture) []string {
				return []string{"-iam", cnameDSN + "?tls=true"}
			},
			setup: func(t *testing.T, _ *fixture) { t.Setenv("AWS_REGION", "us-east-1") },
			step:  stepConnection, cause: causeCNAME, warn: stepEndpoint,
			advice: "pass the RDS endpoint: -iam-endpoint " + iamEndpoint,
		},
		{
			name: "token for a CNAME, without a tls parameter",
			args: func(f *fixture) []string { return []string{"-iam", cnameDSN} },
			step: stepTLS, cause: causeCNAME,
			advice: "pass the RDS endpoint with -iam-endpoint HOST:PORT",
		},
		{
			name: "token for another region",
			args: func(f *fixture) []string {
				return append(iamArgs(f), "-region", "us-west-2")
			},
			step: stepConnection, cause: causeWrongRegion, warn: stepRegion,
			advice: "drop -region, rds-region or WithRegion",
		},
		{
			name: "clock skew",
			opts: rdstest.IAMOptions{Now: inTwentyMinutes},
			setup: func(_ *testing.T, f *fixture) {
				f.sts.mu.Lock()
				f.sts.skew = 20 * time.Minute
				f.sts.mu.Unlock()
			},
			args: iamArgs,
			step: stepConnection, cause: causeClockSkew, warn: stepCredentials,
			advice: "synchronise the clock",
		},
		{
			name: "TLS off with tls=false",
			args: func(f *fixture) []string { return []string{"-iam", iamDSN + "?tls=false"} },
			step: stepTLS, cause: causeTLSOff,
			advice: "remove tls=false from the DSN",
		},
		{
			name: "TLS off with -no-auto-tls",
			args: func(f *fixture) []string { return []string{"-iam", "-no-auto-tls", iamDSN} },
			step: stepTLS, cause: causeTLSOff,
			advice: "drop -no-auto-tls",
		},
		{
			name: "unknown CA",
			args: func(f *fixture) []string { return []string{"-iam", iamDSN} },
			step: stepConnection, cause: causeUnknownCA,
			advice: "pass it with -ca-bundle FILE",
		},
		{
			name: "secret without a password key",
			setup: func(_ *testing.T, f *fixture) {
				f.sm.PutSecret(testSecretID, `{"username":"app"}`)
			},
			args: secretArgs,
			step: stepPassword, cause: causeSecretFormat,
			advice: `store the secret as JSON, {"username":"app","password":"..."}`,
		},
		{
			name: "secret rotation stopped half-way",
			setup: func(t *testing.T, f *fixture) {
				f.sm.PutSecret(testSecretID, secretValue(passwordA))
				if _, err := f.sm.PutPending(testSecretID, secretValue(passwordB)); err != nil {
					t.Fatal(err)
				}
				f.pw.SetPassword("app", passwordC)
			},
			args: secretArgs,
			step: stepConnection, cause: causeRotation, warn: stepPassword,
			advice: "aws secretsmanager rotate-secret --secret-id " + testSecretID,
		},
		{
			name: "secret out of date",
			setup: func(t *testing.T, f *fixture) {
				f.sm.PutSecret(testSecretID, secretValue(passwordA))
				f.pw.SetPassword("app", passwordC)
			},
			args: secretArgs,
			step: stepConnection, cause: causeSecretRefused,
			advice: "set the user's password to the secret's, or rotate the secret",
		},
		{
			name: "secret not found",
			args: secretArgs,
			step: stepPassword, cause: causeSecretNotFound,
			advice: "give the secret's full ARN",
		},
		{
			name: "no region: not an RDS name and instance metadata off",
			setup: func(_ *testing.T, f *fixture) {
				f.sm.PutSecret(testSecretID, secretValue(passwordA))
			},
			args: func(f *fixture) []string {
				return []string{"-secret", testSecretID, "app@tcp(" + cnameHost + ")/shop"}
			},
			step: stepRegion, cause: causeNoRegion,
			advice: "give the region: -region REGION",
		},
		{
			name: "credentials AWS does not know",
			setup: func(_ *testing.T, f *fixture) {
				f.sts.mu.Lock()
				f.sts.fault = "InvalidClientTokenId"
				f.sts.mu.Unlock()
			},
			args: iamArgs,
			step: stepCredentials, cause: causeBadCredentials,
			advice: "create a new access key, or use a role",
		},
		{
			name: "no credentials",
			setup: func(t *testing.T, _ *fixture) {
				t.Setenv("AWS_ACCESS_KEY_ID", "")
				t.Setenv("AWS_SECRET_ACCESS_KEY", "")
				t.Setenv("AWS_SESSION_TOKEN", "")
			},
			args: iamArgs,
			step: stepCredentials, cause: causeNoCredentials,
			advice: "set AWS_PROFILE",
		},
		{
			name: "DSN written as a URL",
			args: func(f *fixture) []string {
				return []string{"-iam", "mysql://app:" + passwordA + "@db1/shop"}
			},
			step: stepEndpoint, cause: causeDSN,
			advice: "write it as user@tcp(host:port)/dbname?param=value",
		},
		{
			name: "two password sources",
			args: func(f *fixture) []string {
				return []string{"-iam", "-secret", testSecretID, iamDSN}
			},
			step: stepEndpoint, cause: causeConfig,
			advice: "change the DSN or the flags as the error says",
		},
		{
			name: "nothing listening",
			args: func(f *fixture) []string {
				return []string{"-iam", "-ca-bundle", f.caFile,
					"app@tcp(db9.abc123.us-east-1.rds.amazonaws.com:3306)/shop"}
			},
			step: stepConnection, cause: causeUnreachable,
			advice: "that its security group lets this host in",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.opts)
			if tt.setup != nil {
				tt.setup(t, f)
			}
			r := f.run(t, append([]string{"check"}, tt.args(f)...)...)
			if r.code != tt.step {
				t.Fatalf("exit status %d, want %d\n%s%s", r.code, tt.step, r.stdout, r.stderr)
			}
			if !stepLine(tt.step, statusFail).MatchString(r.stdout) {
				t.Errorf("step %d did not fail:\n%s", tt.step, r.stdout)
			}
			if !strings.Contains(r.stdout, "("+tt.cause+")\n") {
				t.Errorf("cause %q not given:\n%s", tt.cause, r.stdout)
			}
			found := false
			for _, a := range adviceLines(r.stdout) {
				found = found || strings.Contains(a, tt.advice)
			}
			if !found {
				t.Errorf("no advice line with %q:\n%s", tt.advice, r.stdout)
			}
			if tt.warn != 0 && !stepLine(tt.warn, statusWarn).MatchString(r.stdout) {
				t.Errorf("step %d gave no warning:\n%s", tt.warn, r.stdout)
			}
			for n := tt.step + 1; n <= stepConnection; n++ {
				if stepLine(n, "").MatchString(r.stdout) {
					t.Errorf("step %d ran after step %d failed:\n%s", n, tt.step, r.stdout)
				}
			}
		})
	}
}

// inTwentyMinutes is a clock twenty minutes ahead of this host's.
func inTwentyMinutes() time.Time { return time.Now().Add(20 * time.Minute) }

func iamArgs(f *fixture) []string { return []string{"-iam", "-ca-bundle", f.caFile, iamDSN} }

func secretArgs(f *fixture) []string {
	return []string{"-secret", testSecretID, "-ca-bundle", f.caFile, secretDSN}
}

// TestCheckRotationInProgressConnects covers a rotation caught between its
// steps: the database already has the AWSPENDING password, so rdsconn gets
// in with it, and check passes with a warning.
func TestCheckRotationInProgressConnects(t *testing.T) {
	f := newFixture(t, rdstest.IAMOptions{})
	f.sm.PutSecret(testSecretID, secretValue(passwordA))
	if _, err := f.sm.PutPending(testSecretID, secretValue(passwordB)); err != nil {
		t.Fatal(err)
	}
	f.pw.SetPassword("app", passwordB)
	r := f.run(t, append([]string{"check"}, secretArgs(f)...)...)
	if r.code != 0 {
		t.Fatalf("exit status %d, want 0\n%s", r.code, r.stdout)
	}
	if !stepLine(stepConnection, statusWarn).MatchString(r.stdout) ||
		!strings.Contains(r.stdout, "accepted AWSPENDING: a rotation is in progress") {
		t.Fatalf("no warning about the rotation:\n%s", r.stdout)
	}
}

func TestCheckJSON(t *testing.T) {
	tests := []struct {
		name   string
		setup  func(f *fixture)
		exit   int
		cause  string
		status []string
	}{
		{name: "passing", status: []string{"ok", "ok", "ok", "ok", "ok", "ok"}},
		{
			name:   "failing",
			setup:  func(f *fixture) { f.ep.RemoveUser("app") },
			exit:   stepConnection,
			cause:  causeIAMDenied,
			status: []string{"ok", "ok", "ok", "ok", "ok", "FAIL"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, rdstest.IAMOptions{})
			if tt.setup != nil {
				tt.setup(f)
			}
			r := f.run(t, append([]string{"check", "-json", "-v"}, iamArgs(f)...)...)
			var rep report
			if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
				t.Fatalf("stdout is not one JSON object: %v\n%s", err, r.stdout)
			}
			if r.code != tt.exit || rep.Exit != tt.exit || rep.OK != (tt.exit == 0) ||
				rep.Cause != tt.cause {
				t.Fatalf("exit %d, report exit %d ok %v cause %q; want %d, %q\n%s", r.code,
					rep.Exit, rep.OK, rep.Cause, tt.exit, tt.cause, r.stdout)
			}
			var got []string
			for i, s := range rep.Steps {
				got = append(got, s.Status)
				if s.Number != i+1 || s.Name != stepNames[i+1] || s.Summary == "" {
					t.Errorf("step %d: %+v", i+1, s)
				}
			}
			if strings.Join(got, " ") != strings.Join(tt.status, " ") {
				t.Fatalf("statuses %v, want %v", got, tt.status)
			}
			last := rep.Steps[len(rep.Steps)-1]
			if tt.exit != 0 && (last.Error == "" || len(last.Advice) != 2) {
				t.Fatalf("failed step without error or advice: %+v", last)
			}
			if tt.exit == 0 && last.Facts["tls_version"] == "" {
				t.Fatalf("connection facts lack the TLS version: %+v", last.Facts)
			}
		})
	}
}

// TestDiagnoseIAMDenied covers the ways check narrows down a refused token
// from what earlier steps found, including a CNAME token that reaches the
// server (through a TLS config that verifies the RDS name).
func TestDiagnoseIAMDenied(t *testing.T) {
	tests := []struct {
		name string
		ck   checker
		want string
	}{
		{"CNAME", checker{in: intent{host: cnameHost, endpoint: cnameHost + ":3306"},
			region: "us-east-1"}, causeCNAME},
		{"region", checker{in: intent{host: "db1.abc123.eu-west-1.rds.amazonaws.com"},
			region: "us-east-1"}, causeWrongRegion},
		{"clock behind", checker{in: intent{host: "db1.abc123.us-east-1.rds.amazonaws.com"},
			region: "us-east-1", haveSkew: true, skew: -6 * time.Minute}, causeClockSkew},
		{"small skew", checker{in: intent{host: "db1.abc123.us-east-1.rds.amazonaws.com"},
			region: "us-east-1", haveSkew: true, skew: time.Minute}, causeIAMDenied},
		{"cluster", checker{in: intent{host: "app.cluster-abc123.us-east-1.rds.amazonaws.com"},
			region: "us-east-1", kind: "cluster"}, causeIAMDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.ck.diagnoseIAMDenied()
			if d.cause != tt.want || d.why == "" || len(d.advice) == 0 {
				t.Fatalf("diagnosis %+v, want cause %q", d, tt.want)
			}
			if tt.name == "cluster" && !strings.Contains(d.advice[0], "dbuser:cluster-") {
				t.Fatalf("cluster advice names no cluster resource: %s", d.advice[0])
			}
		})
	}
}

func TestUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
	}{
		{"no command", nil, exitUsage},
		{"unknown command", []string{"frobnicate"}, exitUsage},
		{"help", []string{"help"}, 0},
		{"check without DSN", []string{"check", "-iam"}, exitUsage},
		{"check with two DSNs", []string{"check", iamDSN, iamDSN}, exitUsage},
		{"check -h", []string{"check", "-h"}, 0},
		{"unknown flag", []string{"check", "-bogus", iamDSN}, exitUsage},
		{"missing CA bundle", []string{"check", "-ca-bundle", "/nonexistent.pem", iamDSN},
			exitUsage},
		{"token without DSN", []string{"token"}, exitUsage},
		{"demo with an argument", []string{"demo", "now"}, exitUsage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
			var out, errOut strings.Builder
			if code := run(t.Context(), tt.args, &out, &errOut, env{}); code != tt.code {
				t.Fatalf("exit status %d, want %d\n%s%s", code, tt.code, out.String(),
					errOut.String())
			}
		})
	}
}
