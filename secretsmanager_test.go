package rdsconn

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/rdsconn/rdsconn/rdstest"
)

// newSecretSource is a secret source aimed at the fake, as New makes it.
func newSecretSource(t *testing.T, sm *rdstest.SecretsManager, id, option, endpoint string,
	log *slog.Logger) *secretSource {
	t.Helper()
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	arnRegion, err := parseSecretID(id)
	if err != nil {
		t.Fatal(err)
	}
	cfg := sm.AWSConfig()
	cfg.Region = ""
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &secretSource{id: id, arnRegion: arnRegion, log: log, mu: make(ctxMutex, 1),
		aws: &awsState{
			given:   &cfg,
			regions: &regionFinder{option: option, endpoint: endpoint, mu: make(ctxMutex, 1)},
			log:     log,
			mu:      make(ctxMutex, 1),
		}}
}

// TestSecretSourceThroughSDK drives the secret source through the real
// Secrets Manager client against the fake.
func TestSecretSourceThroughSDK(t *testing.T) {
	sm := rdstest.NewSecretsManager("eu-central-1")
	defer sm.Close()
	const value = `{"username":"app","password":"Zq9%K>u~(_b.&Rj#xF!P-B?","port":"3306"}`
	v1 := sm.PutSecret("prod/app", value)

	src := newSecretSource(t, sm, "prod/app", "", rdsHost+":3306", nil)
	now := time.Now()
	cred, err := src.fetch(context.Background(), now)
	if err != nil {
		t.Fatal(err)
	}
	if cred.password != "Zq9%K>u~(_b.&Rj#xF!P-B?" || cred.user != "app" || cred.version != v1 {
		t.Fatalf("fetched %q/%q version %q", cred.user, cred.password, cred.version)
	}
	if !cred.expires.Equal(now.Add(secretTTL)) {
		t.Fatalf("expires %v, want an hour from now", cred.expires)
	}
	st := sm.Stats()
	if st.GetSecretValue != 1 || st.ByStage[stageCurrent] != 1 {
		t.Fatalf("stats %+v, want one AWSCURRENT call", st)
	}
	// Region from the endpoint name, since the id is not an ARN.
	if got := st.Requests[0].Region; got != "us-east-1" {
		t.Fatalf("request signed for %q, want the endpoint's us-east-1", got)
	}
}

func TestSecretSourceARNRegion(t *testing.T) {
	sm := rdstest.NewSecretsManager("eu-central-1")
	defer sm.Close()
	sm.PutSecret("prod/app", `{"password":"pw"}`)
	src := newSecretSource(t, sm, sm.ARN("prod/app"), "", rdsHost+":3306", nil)
	if _, err := src.fetch(context.Background(), time.Now()); err != nil {
		t.Fatal(err)
	}
	if got := sm.Stats().Requests[0].Region; got != "eu-central-1" {
		t.Fatalf("request signed for %q, want the ARN's eu-central-1", got)
	}
}

func TestSecretSourcePending(t *testing.T) {
	sm := rdstest.NewSecretsManager("")
	defer sm.Close()
	sm.PutSecret("prod/app", `{"password":"A"}`)
	src := newSecretSource(t, sm, "prod/app", "us-east-1", "", nil)
	if _, ok, err := src.fetchPending(context.Background(), time.Now()); ok || err != nil {
		t.Fatalf("no pending version: ok %v, err %v", ok, err)
	}
	pending, err := sm.PutPending("prod/app", `{"password":"B"}`)
	if err != nil {
		t.Fatal(err)
	}
	cred, ok, err := src.fetchPending(context.Background(), time.Now())
	if !ok || err != nil || cred.password != "B" || cred.version != pending {
		t.Fatalf("pending = %q %q, %v, %v", cred.password, cred.version, ok, err)
	}
}

func TestSecretSourceErrors(t *testing.T) {
	tests := []struct {
		name  string
		value string
		fault *rdstest.APIFault
		check func(error) bool
	}{
		{"not found", "", nil, func(err error) bool {
			var nf *types.ResourceNotFoundException
			return errors.As(err, &nf)
		}},
		{"decryption failure", `{"password":"x"}`, &rdstest.FaultDecryption, func(err error) bool {
			var df *types.DecryptionFailure
			return errors.As(err, &df)
		}},
		{"K16 not JSON", "s3cretValue", nil, func(err error) bool {
			return errors.Is(err, ErrSecretFormat) && !strings.Contains(err.Error(), "s3cret")
		}},
		{"K16 no password", `{"username":"app"}`, nil, func(err error) bool {
			return errors.Is(err, ErrSecretFormat)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sm := rdstest.NewSecretsManager("")
			defer sm.Close()
			if tt.value != "" {
				sm.PutSecret("prod/app", tt.value)
			}
			if tt.fault != nil {
				sm.FailNext(10, *tt.fault)
			}
			src := newSecretSource(t, sm, "prod/app", "us-east-1", "", nil)
			if _, err := src.fetch(context.Background(), time.Now()); !tt.check(err) {
				t.Fatalf("unexpected error %v", err)
			}
		})
	}
}

// TestSecretLogs: fetching logs the version, never the value.
func TestSecretLogs(t *testing.T) {
	sm := rdstest.NewSecretsManager("")
	defer sm.Close()
	sm.PutSecret("prod/app", `{"username":"app","password":"MARKER-pw-3141"}`)
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	src := newSecretSource(t, sm, "prod/app", "us-east-1", "", log)
	if _, err := src.fetch(context.Background(), time.Now()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "secret fetched") ||
		!strings.Contains(buf.String(), "version_id") {
		t.Fatalf("log %q lacks the fetch event", buf.String())
	}
	if strings.Contains(buf.String(), "MARKER") {
		t.Fatalf("log holds the password: %s", buf.String())
	}
}
