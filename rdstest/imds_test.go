package rdstest

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
)

func newIMDS(t *testing.T, region string) (*InstanceMetadata, *imds.Client) {
	t.Helper()
	m := NewInstanceMetadata(region)
	t.Cleanup(m.Close)
	return m, imds.New(imds.Options{Endpoint: m.URL(), HTTPClient: m.HTTPClient()})
}

func TestInstanceMetadataRegion(t *testing.T) {
	allowIMDS(t)
	tests := []struct {
		name        string
		setup       func(m *InstanceMetadata)
		options     func(o *imds.Options)
		wantErr     bool
		wantRegion  string
		wantStats   IMDSStats
		wantTimeout bool
	}{
		{name: "token then region", wantRegion: "eu-central-1",
			wantStats: IMDSStats{TokenRequests: 1, Reads: 1}},
		{name: "400 on the token is final",
			setup:     func(m *InstanceMetadata) { m.FailTokenRequests(1, 400) },
			wantErr:   true,
			wantStats: IMDSStats{TokenRequests: 1, Faults: 1}},
		{name: "401 on the read fetches a new token",
			setup: func(m *InstanceMetadata) { m.FailReads(1, 401) },
			options: func(o *imds.Options) {
				o.Retryer, o.DisableDefaultMaxBackoff = quickRetryer(), true
			},
			wantRegion: "eu-central-1",
			wantStats:  IMDSStats{TokenRequests: 2, Reads: 2, Faults: 1}},
		{name: "403 on the token falls back to IMDSv1 where allowed",
			setup: func(m *InstanceMetadata) {
				m.FailTokenRequests(1, 403)
				m.AllowIMDSv1(true)
			},
			wantRegion: "eu-central-1",
			wantStats:  IMDSStats{TokenRequests: 1, Reads: 1, Faults: 1}},
		{name: "403 on the token without fallback fails",
			setup:     func(m *InstanceMetadata) { m.FailTokenRequests(1, 403) },
			options:   func(o *imds.Options) { o.EnableFallback = aws.FalseTernary },
			wantErr:   true,
			wantStats: IMDSStats{TokenRequests: 1, Faults: 1}},
		{name: "hanging service ends with the context",
			setup:       func(m *InstanceMetadata) { m.SetHang(true) },
			options:     func(o *imds.Options) { o.Retryer = aws.NopRetryer{} },
			wantErr:     true,
			wantTimeout: true,
			wantStats:   IMDSStats{TokenRequests: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewInstanceMetadata("eu-central-1")
			t.Cleanup(m.Close)
			if tt.setup != nil {
				tt.setup(m)
			}
			opts := imds.Options{Endpoint: m.URL(), HTTPClient: m.HTTPClient()}
			if tt.options != nil {
				tt.options(&opts)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()

			out, err := imds.New(opts).GetRegion(ctx, &imds.GetRegionInput{})
			if tt.wantErr {
				if err == nil {
					t.Fatalf("region = %q, want an error", out.Region)
				}
				if tt.wantTimeout != errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("err = %v, timeout expected: %v", err, tt.wantTimeout)
				}
			} else if err != nil || out.Region != tt.wantRegion {
				t.Fatalf("GetRegion = %v, %v; want %s", out, err, tt.wantRegion)
			}
			if st := m.Stats(); st != tt.wantStats {
				t.Errorf("stats = %+v, want %+v", st, tt.wantStats)
			}
		})
	}
}

func TestInstanceMetadataTokenIsReused(t *testing.T) {
	allowIMDS(t)
	m, client := newIMDS(t, "ap-southeast-2")
	ctx := context.Background()
	for range 2 {
		if _, err := client.GetRegion(ctx, &imds.GetRegionInput{}); err != nil {
			t.Fatal(err)
		}
	}
	doc, err := client.GetInstanceIdentityDocument(ctx, &imds.GetInstanceIdentityDocumentInput{})
	if err != nil {
		t.Fatal(err)
	}
	if doc.Region != "ap-southeast-2" || doc.InstanceID != fakeInstanceID {
		t.Errorf("document = %+v", doc.InstanceIdentityDocument)
	}
	m.SetRegion("ap-southeast-1")
	out, err := client.GetRegion(ctx, &imds.GetRegionInput{})
	if err != nil || out.Region != "ap-southeast-1" {
		t.Fatalf("after SetRegion: %v, %v", out, err)
	}
	if st := m.Stats(); st.TokenRequests != 1 || st.Reads != 4 {
		t.Errorf("stats = %+v, want one token for four reads", st)
	}
}

func TestInstanceMetadataRequiresToken(t *testing.T) {
	allowIMDS(t)
	m := NewInstanceMetadata("us-east-2")
	t.Cleanup(m.Close)
	resp, err := m.HTTPClient().Get(m.URL() + "/latest/meta-data/placement/region")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || m.Stats().Unauthorized != 1 {
		t.Errorf("read without a token: status %d, stats %+v", resp.StatusCode, m.Stats())
	}
}

func TestUnreachableAddresses(t *testing.T) {
	allowIMDS(t)
	refusing, err := RefusingAddr()
	if err != nil {
		t.Fatal(err)
	}
	silent, err := NewSilentListener()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })

	t.Run("refused at once", func(t *testing.T) {
		start := time.Now()
		if _, err := net.DialTimeout("tcp", refusing, time.Second); err == nil {
			t.Fatal("dial succeeded")
		}
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Errorf("refusal took %v", d)
		}
	})
	t.Run("silent until the deadline", func(t *testing.T) {
		client := imds.New(imds.Options{Endpoint: "http://" + silent.Addr(),
			Retryer: aws.NopRetryer{}})
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if _, err := client.GetRegion(ctx, &imds.GetRegionInput{}); err == nil {
			t.Fatal("GetRegion succeeded against a silent listener")
		}
		if silent.Accepted() == 0 {
			t.Error("the silent listener accepted nothing")
		}
	})
}

// allowIMDS lets the SDK's metadata client run although the test command
// disables it for every other test: these tests aim it at a fake.
func allowIMDS(t *testing.T) {
	t.Helper()
	t.Setenv("AWS_EC2_METADATA_DISABLED", "false")
}
