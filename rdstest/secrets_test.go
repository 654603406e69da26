package rdstest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/aws/smithy-go"
)

func newSecretsManager(t *testing.T) (*SecretsManager, *secretsmanager.Client) {
	t.Helper()
	sm := NewSecretsManager("")
	t.Cleanup(sm.Close)
	return sm, secretsmanager.NewFromConfig(sm.AWSConfig())
}

func getSecret(ctx context.Context, c *secretsmanager.Client, id, stage, version string) (
	*secretsmanager.GetSecretValueOutput, error) {
	in := &secretsmanager.GetSecretValueInput{SecretId: aws.String(id)}
	if stage != "" {
		in.VersionStage = aws.String(stage)
	}
	if version != "" {
		in.VersionId = aws.String(version)
	}
	return c.GetSecretValue(ctx, in)
}

func TestSecretsManagerLookups(t *testing.T) {
	sm, client := newSecretsManager(t)
	v1 := sm.PutSecret("prod/db", `{"username":"app","password":"one"}`)
	v2 := sm.PutSecret("prod/db", `{"username":"app","password":"two"}`)
	v3, err := sm.PutPending("prod/db", `{"username":"app","password":"three"}`)
	if err != nil {
		t.Fatal(err)
	}
	arn := sm.ARN("prod/db")

	tests := []struct {
		name, id, stage, version string
		wantVersion              string
		wantStages               []string
	}{
		{name: "by name, current by default", id: "prod/db", wantVersion: v2,
			wantStages: []string{StageCurrent}},
		{name: "by full ARN", id: arn, wantVersion: v2, wantStages: []string{StageCurrent}},
		{name: "by ARN without suffix", id: arn[:len(arn)-7], wantVersion: v2,
			wantStages: []string{StageCurrent}},
		{name: "pending", id: "prod/db", stage: StagePending, wantVersion: v3,
			wantStages: []string{StagePending}},
		{name: "previous", id: "prod/db", stage: StagePrevious, wantVersion: v1,
			wantStages: []string{StagePrevious}},
		{name: "by version id", id: "prod/db", version: v1, wantVersion: v1,
			wantStages: []string{StagePrevious}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := getSecret(context.Background(), client, tt.id, tt.stage, tt.version)
			if err != nil {
				t.Fatal(err)
			}
			if aws.ToString(out.VersionId) != tt.wantVersion || aws.ToString(out.ARN) != arn ||
				aws.ToString(out.Name) != "prod/db" || out.CreatedDate == nil ||
				strings.Join(out.VersionStages, ",") != strings.Join(tt.wantStages, ",") {
				t.Errorf("got version %s stages %v arn %s name %s", aws.ToString(out.VersionId),
					out.VersionStages, aws.ToString(out.ARN), aws.ToString(out.Name))
			}
		})
	}

	st := sm.Stats()
	if st.GetSecretValue != len(tests) || st.ByStage[StageCurrent] != 3 ||
		st.ByStage[StagePending] != 1 || st.ByStage[StagePrevious] != 1 {
		t.Errorf("stats = %+v", st)
	}
	if r := st.Requests[0]; r.Region != "us-east-1" || r.AccessKeyID != "AKIDSECRETSTEST00001" {
		t.Errorf("request signed for %q by %q", r.Region, r.AccessKeyID)
	}
}

func TestSecretsManagerRotation(t *testing.T) {
	sm, client := newSecretsManager(t)
	ctx := context.Background()
	old := sm.PutSecret("db", "old")
	pending, err := sm.PutPending("db", "new")
	if err != nil {
		t.Fatal(err)
	}
	if err := sm.Promote("db", pending); err != nil {
		t.Fatal(err)
	}

	out, err := getSecret(ctx, client, "db", "", "")
	if err != nil || aws.ToString(out.SecretString) != "new" {
		t.Fatalf("current = %v, %v", out, err)
	}
	out, err = getSecret(ctx, client, "db", StagePrevious, "")
	if err != nil || aws.ToString(out.VersionId) != old {
		t.Fatalf("previous = %v, %v", out, err)
	}
	if _, err := getSecret(ctx, client, "db", StagePending, ""); err == nil {
		t.Error("AWSPENDING still found after the promotion")
	}
	stages := sm.Stages("db")
	if strings.Join(stages[old], ",") != StagePrevious ||
		strings.Join(stages[pending], ",") != StageCurrent {
		t.Errorf("stages = %v", stages)
	}

	if err := sm.Promote("db", "no-such-version"); err == nil {
		t.Error("promoted a version that does not exist")
	}
	if _, err := sm.PutPending("missing", "x"); err == nil {
		t.Error("PutPending created a secret")
	}
}

func TestSecretsManagerErrors(t *testing.T) {
	tests := []struct {
		name      string
		id        string
		fault     *APIFault
		faults    int
		check     func(t *testing.T, err error)
		wantCalls int
	}{
		{name: "unknown secret", id: "missing", wantCalls: 1, check: func(t *testing.T, err error) {
			var nf *types.ResourceNotFoundException
			if !errors.As(err, &nf) {
				t.Errorf("err = %v, want *types.ResourceNotFoundException", err)
			}
		}},
		{name: "decryption failure", id: "db", fault: &FaultDecryption, faults: 1, wantCalls: 1,
			check: func(t *testing.T, err error) {
				var df *types.DecryptionFailure
				if !errors.As(err, &df) {
					t.Errorf("err = %v, want *types.DecryptionFailure", err)
				}
			}},
		{name: "access denied", id: "db", fault: &FaultAccessDenied, faults: 1, wantCalls: 1,
			check: func(t *testing.T, err error) {
				var api smithy.APIError
				if !errors.As(err, &api) || api.ErrorCode() != "AccessDeniedException" {
					t.Errorf("err = %v, want AccessDeniedException", err)
				}
			}},
		{name: "throttled then retried", id: "db", fault: &FaultThrottling, faults: 2,
			wantCalls: 3, check: func(t *testing.T, err error) {
				if err != nil {
					t.Errorf("err = %v, want success after retries", err)
				}
			}},
		{name: "internal errors exhaust retries", id: "db", fault: &FaultInternal, faults: 3,
			wantCalls: 3, check: func(t *testing.T, err error) {
				var ise *types.InternalServiceError
				if !errors.As(err, &ise) {
					t.Errorf("err = %v, want *types.InternalServiceError", err)
				}
			}},
		{name: "malformed body", id: "db", fault: &FaultMalformed, faults: 1, wantCalls: 1,
			check: func(t *testing.T, err error) {
				var de *smithy.DeserializationError
				if !errors.As(err, &de) {
					t.Errorf("err = %v, want *smithy.DeserializationError", err)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sm, client := newSecretsManager(t)
			sm.PutSecret("db", "value")
			if tt.fault != nil {
				sm.FailNext(tt.faults, *tt.fault)
			}
			_, err := getSecret(context.Background(), client, tt.id, "", "")
			tt.check(t, err)
			if st := sm.Stats(); st.GetSecretValue != tt.wantCalls {
				t.Errorf("calls = %d, want %d", st.GetSecretValue, tt.wantCalls)
			}
		})
	}
}

func TestSecretsManagerStallAndDelay(t *testing.T) {
	sm, client := newSecretsManager(t)
	sm.PutSecret("db", "value")

	sm.FailNext(1, FaultStall)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	c := secretsmanager.NewFromConfig(sm.AWSConfig(), func(o *secretsmanager.Options) {
		o.Retryer = aws.NopRetryer{}
	})
	if _, err := getSecret(ctx, c, "db", "", ""); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the deadline to end a stalled call", err)
	}

	sm.SetDelay(50 * time.Millisecond)
	start := time.Now()
	if _, err := getSecret(context.Background(), client, "db", "", ""); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("answered after %v, want at least the 50ms delay", d)
	}
}

func TestSecretsManagerWithLoadedConfig(t *testing.T) {
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENV000000001")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "rdstest-env-secret")
	t.Setenv("AWS_CONFIG_FILE", t.TempDir()+"/none")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", t.TempDir()+"/none")
	sm := NewSecretsManager("eu-west-1")
	t.Cleanup(sm.Close)
	sm.PutSecret("db", "value")

	cfg, err := config.LoadDefaultConfig(context.Background(), config.WithRegion("eu-west-1"),
		config.WithBaseEndpoint(sm.URL()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := getSecret(context.Background(), secretsmanager.NewFromConfig(cfg),
		sm.ARN("db"), "", ""); err != nil {
		t.Fatal(err)
	}
	r := sm.Stats().Requests[0]
	if r.Region != "eu-west-1" || r.AccessKeyID != "AKIDFROMENV000000001" {
		t.Errorf("request = %+v", r)
	}
}
