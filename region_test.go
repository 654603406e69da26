package rdsconn

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
)

func TestRegionFromHost(t *testing.T) {
	tests := []struct {
		name, host, region, kind string
	}{
		// K10: the endpoint names of the shared cases.
		{"K10 instance", "db1.abc123.us-east-1.rds.amazonaws.com", "us-east-1", kindInstance},
		{"K10 cluster", "app.cluster-abc123.eu-west-1.rds.amazonaws.com", "eu-west-1", kindCluster},
		{"K10 reader", "app.cluster-ro-abc123.eu-west-1.rds.amazonaws.com", "eu-west-1", kindReader},
		{"K10 proxy", "px1.proxy-abc123.us-west-2.rds.amazonaws.com", "us-west-2", kindProxy},
		{"K10 China old form", "db1.abc123.rds.cn-north-1.amazonaws.com.cn", "cn-north-1", kindInstance},
		{"K10 GovCloud", "db1.abc123.us-gov-west-1.rds.amazonaws.com", "us-gov-west-1", kindInstance},
		{"K10 upper case and trailing dot", "DB1.ABC123.US-EAST-1.RDS.AMAZONAWS.COM.", "us-east-1", kindInstance},
		{"K10 localhost", "localhost", "", ""},
		{"K10 IPv4", "10.0.0.5", "", ""},
		{"K10 CNAME", "db.internal.example.com", "", ""},
		{"K10 look-alike", "x.rds.amazonaws.com.attacker.example", "", ""},

		{"with port", "db1.abc123.us-east-1.rds.amazonaws.com:3307", "us-east-1", kindInstance},
		{"custom endpoint", "rpt.cluster-custom-abc123.ap-south-1.rds.amazonaws.com", "ap-south-1", kindCustom},
		{"proxy extra endpoint", "ro.endpoint.proxy-abc123.us-east-2.rds.amazonaws.com", "us-east-2", kindProxy},
		{"Limitless shard group", "sg1.shardgrp-abc123.us-east-1.rds.amazonaws.com", "us-east-1", kindShard},
		{"China new form", "db1.abc123.cn-northwest-1.rds.amazonaws.com.cn", "cn-northwest-1", kindInstance},
		{"FIPS", "db1.abc123.us-east-1.rds-fips.amazonaws.com", "us-east-1", kindInstance},
		{"ISO", "db1.abc123.us-iso-east-1.rds.c2s.ic.gov", "us-iso-east-1", kindInstance},
		{"ISO-B", "db1.abc123.us-isob-east-1.rds.sc2s.sgov.gov", "us-isob-east-1", kindInstance},
		{"ISO-E", "db1.abc123.eu-isoe-west-1.rds.cloud.adc-e.uk", "eu-isoe-west-1", kindInstance},
		{"ISO-F", "db1.abc123.us-isof-south-1.rds.csp.hci.ic.gov", "us-isof-south-1", kindInstance},
		{"EU sovereign cloud", "db1.abc123.eusc-de-east-1.rds.amazonaws.eu", "eusc-de-east-1", kindInstance},

		{"IPv6", "::1", "", ""},
		{"IPv6 with port", "[::1]:3306", "", ""},
		{"empty", "", "", ""},
		{"service endpoint, no instance", "rds.us-east-1.amazonaws.com", "", ""},
		{"too few labels", "abc123.us-east-1.rds.amazonaws.com", "", ""},
		{"not a region", "db1.abc123.useast1.rds.amazonaws.com", "", ""},
		{"region without number", "db1.abc123.us-east.rds.amazonaws.com", "", ""},
		{"empty label", "db1..us-east-1.rds.amazonaws.com", "", ""},
		{"suffix inside a label", "db1.abc123.us-east-1.rdsamazonaws.com", "", ""},
		{"other service", "db1.abc123.us-east-1.redshift.amazonaws.com", "", ""},
		{"look-alike domain", "db1.abc123.us-east-1.rds.amazonaws.com.evil.com", "", ""},
		{"look-alike suffix", "db1.abc123.us-east-1.rds.notamazonaws.com", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			region, ok := RegionFromHost(tt.host)
			if region != tt.region || ok != (tt.region != "") {
				t.Fatalf("RegionFromHost(%q) = %q, %v; want %q", tt.host, region, ok, tt.region)
			}
			if _, kind, _ := parseEndpoint(tt.host); kind != tt.kind {
				t.Errorf("kind of %q = %q, want %q", tt.host, kind, tt.kind)
			}
		})
	}
}

// TestRegionOrder checks that each source of the region wins over those
// after it, and that the endpoint name beats the machine's own region.
func TestRegionOrder(t *testing.T) {
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	rds := "db1.abc123.eu-west-1.rds.amazonaws.com:3306"
	tests := []struct {
		name      string
		option    string
		arn       string
		endpoint  string
		cfgRegion string
		want      string
	}{
		{"option wins over everything", "ap-south-1", "us-west-2", rds, "us-east-1", "ap-south-1"},
		{"ARN next, for Secrets Manager", "", "us-west-2", rds, "us-east-1", "us-west-2"},
		{"endpoint name before the AWS config", "", "", rds, "us-east-1", "eu-west-1"},
		{"AWS config for a non-RDS name", "", "", "db.internal.example.com:3306", "us-east-1", "us-east-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &regionFinder{option: tt.option, endpoint: tt.endpoint, mu: make(ctxMutex, 1)}
			got, err := f.find(context.Background(), aws.Config{Region: tt.cfgRegion}, tt.arn)
			if err != nil || got.region != tt.want {
				t.Fatalf("find = %q, %v; want %q", got.region, err, tt.want)
			}
		})
	}
}

// fakeIMDS serves the region the way EC2 instance metadata (IMDSv2) does,
// or fails in the way mode says.
func fakeIMDS(t *testing.T, mode string) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		switch {
		case mode == "hang":
			<-r.Context().Done()
		case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token":
			if mode == "token400" {
				http.Error(w, "bad request", http.StatusBadRequest)
				return
			}
			w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", "21600")
			w.Write([]byte("imds-token"))
		case r.URL.Path == "/latest/dynamic/instance-identity/document":
			if mode == "read401" || r.Header.Get("X-Aws-Ec2-Metadata-Token") != "imds-token" {
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
			w.Write([]byte(`{"region":"sa-east-1","instanceId":"i-0abc"}`))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

// TestRegionFromInstanceMetadata covers K12: a broken or slow metadata
// service costs about a second at most, once per connector; an RDS name
// means it is never asked.
func TestRegionFromInstanceMetadata(t *testing.T) {
	tests := []struct {
		name     string
		mode     string
		endpoint string
		want     string // "" for a configuration error
		asked    bool
	}{
		{"answers", "ok", "db.internal.example.com:3306", "sa-east-1", true},
		{"K12 RDS name: never asked", "ok", "db1.abc123.us-east-1.rds.amazonaws.com:3306", "us-east-1", false},
		{"K12 400 on the token request", "token400", "10.0.0.5:3306", "", true},
		{"K12 401 on the read", "read401", "10.0.0.5:3306", "", true},
		{"K12 never answers", "hang", "10.0.0.5:3306", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, calls := fakeIMDS(t, tt.mode)
			t.Setenv("AWS_EC2_METADATA_DISABLED", "false")
			t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", srv.URL)
			f := &regionFinder{endpoint: tt.endpoint, mu: make(ctxMutex, 1)}
			for i := range 3 {
				start := time.Now()
				got, err := f.find(context.Background(), aws.Config{}, "")
				if took := time.Since(start); took > 1500*time.Millisecond {
					t.Fatalf("probe %d took %v, want about a second at most", i, took)
				}
				if tt.want == "" {
					if !errorIsConfig(err) || !strings.Contains(err.Error(), "WithRegion") {
						t.Fatalf("err = %v, want a configuration error naming WithRegion", err)
					}
				} else if err != nil || got.region != tt.want {
					t.Fatalf("find = %q, %v; want %q", got.region, err, tt.want)
				}
			}
			n := calls.Load()
			if !tt.asked && n != 0 {
				t.Fatalf("instance metadata asked %d times, want never", n)
			}
			if tt.asked && (n == 0 || n > 2) {
				t.Fatalf("instance metadata asked %d times over three finds, want one probe", n)
			}
		})
	}
}

func TestRegionProbeHonoursContext(t *testing.T) {
	srv, _ := fakeIMDS(t, "hang")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "false")
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", srv.URL)
	f := &regionFinder{endpoint: "10.0.0.5:3306", mu: make(ctxMutex, 1)}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := f.find(ctx, aws.Config{}, "")
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Fatalf("find took %v after a 50ms deadline", took)
	}
	if !errorIsDeadline(err) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
}

func TestRegionMetadataDisabled(t *testing.T) {
	srv, calls := fakeIMDS(t, "ok")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", srv.URL)
	f := &regionFinder{endpoint: "10.0.0.5:3306", mu: make(ctxMutex, 1)}
	if _, err := f.find(context.Background(), aws.Config{}, ""); !errorIsConfig(err) {
		t.Fatalf("err = %v, want a configuration error", err)
	}
	if calls.Load() != 0 {
		t.Fatal("instance metadata was asked although AWS_EC2_METADATA_DISABLED=true")
	}
}
