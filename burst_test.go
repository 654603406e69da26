package rdsconn

import (
	"testing"

	"github.com/rdsconn/rdsconn/rdstest"
)

// TestBurstCallCounts opens 1,000 connections at once on a cold connector
// and checks that they share one token build or one GetSecretValue call:
// the call counts of BenchmarkBurst, asserted so that a regression in the
// shared fetch fails CI. The fetch is held until every caller has entered
// Connect, so all 1,000 are sure to arrive while it is in flight.
func TestBurstCallCounts(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 TLS connections; skipped with -short")
	}
	const callers = 1000
	target := newEndpointTarget(t, rdstest.ECDSAP256)
	tests := []struct {
		name    string
		via     string
		builds  int64
		secrets int
	}{
		{"IAM token built once", "rdsconn-iam", 1, 0},
		{"secret fetched once", "rdsconn-secret", 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runBurst(t, target, contenderNamed(tt.via), callers, true)
			if r.builds != tt.builds || r.secrets != tt.secrets {
				t.Errorf("%d simultaneous Connects made %d token builds and %d GetSecretValue "+
					"calls; want %d and %d", callers, r.builds, r.secrets, tt.builds, tt.secrets)
			}
		})
	}
}
