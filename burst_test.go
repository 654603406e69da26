package rdsconn

import (
	"context"
	"testing"
	"time"

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

// TestLateArrivalStartsNoSecondFetch covers a caller that found nothing
// cached, and then took the cache's lock only after the fetch it should have
// shared had finished: it must use that fetch's value and start no refresh
// of it. The test holds the lock so that the fetch's finish queues on it
// before the late caller does. If the scheduler orders them otherwise, the
// late caller simply joins the fetch and the test passes without checking.
func TestLateArrivalStartsNoSecondFetch(t *testing.T) {
	target := newEndpointTarget(t, rdstest.ECDSAP256)
	n := &calls{holdFor: 1} // the build waits until entered reaches 1
	c := contenderNamed("rdsconn-iam").connector(t, target, &tlsWatch{}, n).(*Connector)
	ctx := context.Background()
	connect := func() <-chan error {
		done := make(chan error, 1)
		go func() {
			conn, err := c.Connect(ctx)
			if err == nil {
				conn.Close()
			}
			done <- err
		}()
		return done
	}

	first := connect()
	for n.builds.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	c.cache.mu.Lock()
	n.entered.Add(1)                   // the build goes on, and its finish queues on the lock
	time.Sleep(100 * time.Millisecond) // the build, the connector, the queueing
	late := connect()                  // finds nothing cached and queues behind the finish
	time.Sleep(100 * time.Millisecond)
	c.cache.mu.Unlock()

	for _, done := range []<-chan error{first, late} {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond) // time for a refresh that should not start
	if got := n.builds.Load(); got != 1 {
		t.Errorf("two Connects on a cold connector made %d token builds, want 1", got)
	}
}
