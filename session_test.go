package rdsconn

import (
	"context"
	"crypto/tls"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/go-sql-driver/mysql"
	"github.com/rdsconn/rdsconn/rdstest"
)

// sessionUse is one lookup in a TLS session cache: the key asked for, and
// the key the session handed out was stored under ("" for a miss).
type sessionUse struct{ asked, storedUnder string }

// recordingSessionCache wraps a session cache and remembers, for every
// session, the key it was stored under and every lookup.
type recordingSessionCache struct {
	inner tls.ClientSessionCache

	mu       sync.Mutex
	putUnder map[*tls.ClientSessionState]string
	puts     []string
	uses     []sessionUse
}

func newRecordingSessionCache(inner tls.ClientSessionCache) *recordingSessionCache {
	return &recordingSessionCache{inner: inner, putUnder: map[*tls.ClientSessionState]string{}}
}

func (r *recordingSessionCache) Get(key string) (*tls.ClientSessionState, bool) {
	s, ok := r.inner.Get(key)
	r.mu.Lock()
	defer r.mu.Unlock()
	u := sessionUse{asked: key}
	if ok {
		u.storedUnder = r.putUnder[s]
	}
	r.uses = append(r.uses, u)
	return s, ok
}

func (r *recordingSessionCache) Put(key string, s *tls.ClientSessionState) {
	r.mu.Lock()
	if s != nil {
		r.putUnder[s] = key
		r.puts = append(r.puts, key)
	}
	r.mu.Unlock()
	r.inner.Put(key, s)
}

func (r *recordingSessionCache) snapshot() (puts []string, uses []sessionUse) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.puts...), append([]sessionUse(nil), r.uses...)
}

// TestTLSSessionsStayWithTheirServerName checks the session cache of auto
// TLS against two endpoints that share a CA: a second connection to the
// same endpoint resumes its session, and no connection ever resumes a
// session made with the other endpoint, neither with each connector's own
// cache nor when both are given one cache on purpose.
func TestTLSSessionsStayWithTheirServerName(t *testing.T) {
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	ca, err := rdstest.NewCA("rdsconn session test CA")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := func(hostPort string) *rdstest.IAMEndpoint {
		ep, err := rdstest.NewIAMEndpoint(rdstest.IAMOptions{Endpoint: hostPort, CA: ca,
			Users: []string{benchUser}, Credentials: []aws.Credentials{benchCreds}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ep.Close() })
		return ep
	}
	epA := endpoint("db1.abc123.us-east-1.rds.amazonaws.com:3306")
	epB := endpoint("db2.abc123.us-east-1.rds.amazonaws.com:3306")

	// connector makes an IAM connector for ep whose auto-TLS session cache
	// is recorded, or replaced by shared when that is given.
	connector := func(ep *rdstest.IAMEndpoint, shared *recordingSessionCache) (
		*Connector, *recordingSessionCache, *tlsWatch) {
		cfg := mysql.NewConfig()
		cfg.User = benchUser
		cfg.Addr = ep.Endpoint()
		cfg.DialFunc = ep.DialContext
		c := New(cfg, WithIAM(), WithRootCAs(ca.Pool()), WithAWSConfig(aws.Config{
			Credentials: credentials.StaticCredentialsProvider{Value: benchCreds}}))
		if c.err != nil {
			t.Fatal(c.err)
		}
		t.Cleanup(func() { c.Close() })
		if c.base.TLS == nil || c.base.TLS.ClientSessionCache == nil {
			t.Fatal("auto TLS has no session cache")
		}
		rec := shared
		if rec == nil {
			rec = newRecordingSessionCache(c.base.TLS.ClientSessionCache)
		}
		c.base.TLS.ClientSessionCache = rec
		w := &tlsWatch{}
		w.attach(c.base.TLS)
		return c, rec, w
	}
	connect := func(c *Connector, w *tlsWatch) (resumed bool) {
		t.Helper()
		before := w.resumed.Load()
		conn, err := c.Connect(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
		return w.resumed.Load() > before
	}
	checkUses := func(name string, rec *recordingSessionCache) {
		t.Helper()
		puts, uses := rec.snapshot()
		if len(puts) == 0 {
			t.Errorf("%s: no session was stored", name)
		}
		for _, u := range uses {
			if u.storedUnder != "" && u.storedUnder != u.asked {
				t.Errorf("%s: a lookup for %s got the session stored for %s", name, u.asked,
					u.storedUnder)
			}
		}
	}

	t.Run("own caches", func(t *testing.T) {
		connA, recA, wA := connector(epA, nil)
		connB, recB, wB := connector(epB, nil)
		if connect(connA, wA) {
			t.Error("the first connection to A resumed a session")
		}
		if !connect(connA, wA) {
			t.Error("the second connection to A did not resume its session")
		}
		if connect(connB, wB) {
			t.Error("the first connection to B resumed a session")
		}
		checkUses("A", recA)
		checkUses("B", recB)
		for name, rec := range map[string]*recordingSessionCache{"A": recA, "B": recB} {
			want := epA.Hostname()
			if name == "B" {
				want = epB.Hostname()
			}
			puts, _ := rec.snapshot()
			for _, key := range puts {
				if key != want {
					t.Errorf("connector %s stored a session under %q, want only %q", name, key, want)
				}
			}
		}
	})

	t.Run("one cache shared on purpose", func(t *testing.T) {
		shared := newRecordingSessionCache(tls.NewLRUClientSessionCache(sessionCacheSize))
		connA, _, wA := connector(epA, shared)
		connB, _, wB := connector(epB, shared)
		connect(connA, wA)
		if connect(connB, wB) {
			t.Error("the first connection to B resumed a session, which only A had made")
		}
		if !connect(connB, wB) {
			t.Error("the second connection to B did not resume its own session")
		}
		if !connect(connA, wA) {
			t.Error("the second connection to A did not resume its own session")
		}
		checkUses("shared", shared)
	})
}

// TestTLSSessionResumedByMariaDB checks that a real server resumes the
// sessions of auto TLS: MariaDB 10.11, as scripts/test starts it.
func TestTLSSessionResumedByMariaDB(t *testing.T) {
	target := newMariaDBTarget(t)
	var w tlsWatch
	c := makeRdsconnSecret(true)(t, target, &w, &calls{})
	for range 3 {
		connectClose(t, context.Background(), c)
	}
	if got := w.resumed.Load(); got != 2 {
		t.Errorf("%d of 3 connections resumed a TLS session, want the last 2", got)
	}
}
