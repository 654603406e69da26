package rdsconn

import (
	"errors"
	"strings"
	"testing"
)

// TestParseSecret covers K16: the password arrives exactly as stored, the
// port may be a number or a string, and unusable values are clear errors
// that never quote the value.
func TestParseSecret(t *testing.T) {
	const pw = `Zq9%K>u~(_b.&Rj#xF!P-B?`
	full := `{"engine":"mysql","host":"db1.abc123.us-east-1.rds.amazonaws.com","port":3306,` +
		`"username":"app","password":"Zq9%K>u~(_b.&Rj#xF!P-B?"}`
	tests := []struct {
		name     string
		value    string
		password string
		user     string
		wantErr  string
	}{
		{"K16 RDS secret", full, pw, "app", ""},
		{"K16 port as a string", strings.Replace(full, `3306`, `"3306"`, 1), pw, "app", ""},
		{"K16 not JSON", "s3cretValue", "", "", "not a JSON object"},
		{"K16 no password", `{"username":"app"}`, "", "", `no non-empty "password"`},
		{"K16 empty password", `{"password":""}`, "", "", `no non-empty "password"`},
		{"password not a string", `{"password":12345}`, "", "", `"password" is not a string`},
		{"null password", `{"password":null}`, "", "", `no non-empty "password"`},
		{"JSON array", `["s3cretValue"]`, "", "", "not a JSON object"},
		{"escapes decoded", `{"password":"a\"b\\c\u00e9"}`, "a\"b\\c\u00e9", "", ""},
		{"URL characters", `{"password":"p@ss:w/rd?&#%"}`, "p@ss:w/rd?&#%", "", ""},
		{"username not a string", `{"password":"x","username":7}`, "", "", `"username" is not a string`},
		{"other keys ignored", `{"password":"x","dbClusterIdentifier":"c1","extra":{"a":1}}`,
			"x", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cred, err := parseSecret(tt.value)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrSecretFormat) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want ErrSecretFormat saying %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "12345") {
					t.Fatalf("error %q quotes the secret value", err)
				}
				return
			}
			if err != nil || cred.password != tt.password || cred.user != tt.user {
				t.Fatalf("parseSecret = %q/%q, %v; want %q/%q", cred.user, cred.password, err,
					tt.user, tt.password)
			}
		})
	}
}

func TestParseSecretID(t *testing.T) {
	tests := []struct {
		id, region string
		ok         bool
	}{
		{"prod/app", "", true},
		{"arn:aws:secretsmanager:eu-central-1:123456789012:secret:prod/app-AbCdEf", "eu-central-1", true},
		{"arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:app-AbCdEf", "cn-north-1", true},
		{"arn:aws:secretsmanager::123456789012:secret:app", "", false},
		{"arn:aws:secretsmanager:us-east-1:123456789012:secret:", "", false},
		{"arn:aws:secretsmanager:us-east-1", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			region, err := parseSecretID(tt.id)
			if (err == nil) != tt.ok || region != tt.region {
				t.Fatalf("parseSecretID = %q, %v; want %q, ok %v", region, err, tt.region, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrConfig) {
				t.Fatalf("err %v is not ErrConfig", err)
			}
		})
	}
}
