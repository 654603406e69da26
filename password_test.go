package rdsconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a settable wall clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock(hhmmss string) *fakeClock {
	t, err := time.Parse(time.DateTime, "2026-01-02 "+hhmmss)
	if err != nil {
		panic(err)
	}
	return &fakeClock{t: t}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(hhmmss string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, err := time.Parse(time.DateTime, "2026-01-02 "+hhmmss)
	if err != nil {
		panic(err)
	}
	c.t = t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// countingSource hands out "pw-1", "pw-2", ... each valid for ttl, or the
// error in fail. A fetch blocks while gate is not nil and not closed.
type countingSource struct {
	ttl     time.Duration
	lasting bool // values do not die at expiry, like secrets
	calls   atomic.Int32
	fail    atomic.Pointer[error]
	gate    chan struct{}
}

func (s *countingSource) describe() string { return "test source" }
func (s *countingSource) hints() []string  { return nil }

func (s *countingSource) fetch(ctx context.Context, now time.Time) (credential, error) {
	n := s.calls.Add(1)
	if s.gate != nil {
		select {
		case <-s.gate:
		case <-ctx.Done():
			return credential{}, ctx.Err()
		}
	}
	if errp := s.fail.Load(); errp != nil {
		return credential{}, *errp
	}
	return credential{password: fmt.Sprintf("pw-%d", n), expires: now.Add(s.ttl),
		dies: !s.lasting}, nil
}

func (s *countingSource) failWith(err error) {
	if err == nil {
		s.fail.Store(nil)
		return
	}
	s.fail.Store(&err)
}

func newTestCache(t *testing.T, src source, clock *fakeClock) *cache {
	t.Helper()
	closing, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return &cache{
		src:     src,
		build:   func(cr credential) (*entry, error) { return &entry{cred: cr}, nil },
		now:     clock.Now,
		log:     slog.New(slog.DiscardHandler),
		closing: closing,
	}
}

// waitIdle waits until no fetch is in flight.
func waitIdle(t *testing.T, c *cache) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		idle := c.call == nil
		c.mu.Unlock()
		if idle {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("a fetch is still in flight after 5s")
}

func mustGet(t *testing.T, c *cache) string {
	t.Helper()
	e, err := c.get(context.Background())
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	return e.cred.password
}

// TestCacheReuseWindow covers K05 for the cache alone: a value is reused up
// to its expiry and never after it.
func TestCacheReuseWindow(t *testing.T) {
	clock := newFakeClock("12:00:00")
	src := &countingSource{ttl: 10 * time.Minute}
	c := newTestCache(t, src, clock)

	if got := mustGet(t, c); got != "pw-1" {
		t.Fatalf("first get = %q", got)
	}
	clock.Set("12:07:59") // before the refresh-ahead point (8 minutes)
	if got := mustGet(t, c); got != "pw-1" || src.calls.Load() != 1 {
		t.Fatalf("at 12:07:59 got %q after %d fetches, want pw-1 after 1", got, src.calls.Load())
	}
	clock.Set("12:09:59") // refresh-ahead window: still served, refreshed behind
	if got := mustGet(t, c); got != "pw-1" {
		t.Fatalf("at 12:09:59 got %q, want the cached pw-1", got)
	}
	waitIdle(t, c)
	if got := mustGet(t, c); got != "pw-2" {
		t.Fatalf("after the background refresh got %q, want pw-2", got)
	}
}

func TestCacheHardExpiry(t *testing.T) {
	clock := newFakeClock("12:00:00")
	src := &countingSource{ttl: 10 * time.Minute}
	c := newTestCache(t, src, clock)
	mustGet(t, c)
	clock.Set("12:10:01")
	if got := mustGet(t, c); got != "pw-2" {
		t.Fatalf("at 12:10:01 got %q, want a fresh pw-2", got)
	}
}

// TestCacheOneFetchForMany covers K18 for the cache: a hundred callers on a
// cold cache share one fetch and one value.
func TestCacheOneFetchForMany(t *testing.T) {
	src := &countingSource{ttl: time.Hour, gate: make(chan struct{})}
	c := newTestCache(t, src, newFakeClock("12:00:00"))
	const n = 100
	var wg sync.WaitGroup
	got := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			e, err := c.get(context.Background())
			errs[i] = err
			if e != nil {
				got[i] = e.cred.password
			}
		})
	}
	time.Sleep(20 * time.Millisecond) // let them pile up on the gate
	close(src.gate)
	wg.Wait()
	for i := range n {
		if errs[i] != nil || got[i] != "pw-1" {
			t.Fatalf("caller %d got %q, %v; want pw-1", i, got[i], errs[i])
		}
	}
	if calls := src.calls.Load(); calls != 1 {
		t.Fatalf("%d fetches for %d callers, want 1", calls, n)
	}
}

// TestCacheSharedFailure covers K18's failure half: every waiter gets the
// error, nothing is cached, and the next get fetches again.
func TestCacheSharedFailure(t *testing.T) {
	boom := errors.New("throttled")
	src := &countingSource{ttl: time.Hour, gate: make(chan struct{})}
	src.failWith(boom)
	c := newTestCache(t, src, newFakeClock("12:00:00"))
	const n = 50
	var wg sync.WaitGroup
	var failed atomic.Int32
	for range n {
		wg.Go(func() {
			if _, err := c.get(context.Background()); errors.Is(err, boom) {
				failed.Add(1)
			}
		})
	}
	time.Sleep(20 * time.Millisecond)
	close(src.gate)
	wg.Wait()
	if failed.Load() != n || src.calls.Load() != 1 {
		t.Fatalf("%d of %d callers failed after %d fetches; want all after 1",
			failed.Load(), n, src.calls.Load())
	}
	if c.cur.Load() != nil {
		t.Fatal("a failed fetch left a cached value")
	}
	src.failWith(nil)
	if got := mustGet(t, c); got != "pw-2" || src.calls.Load() != 2 {
		t.Fatalf("next get = %q after %d fetches, want pw-2 after 2", got, src.calls.Load())
	}
}

// TestCacheGeneration: connections refused together with the same value
// cause one fetch; a refusal of an old value does not drop a newer one.
func TestCacheGeneration(t *testing.T) {
	src := &countingSource{ttl: time.Hour}
	c := newTestCache(t, src, newFakeClock("12:00:00"))
	old, _ := c.get(context.Background())
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if _, err := c.renew(context.Background(), old); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if calls := src.calls.Load(); calls != 2 {
		t.Fatalf("%d fetches after 50 refusals of one value, want 2 in all", calls)
	}
	fresh, _ := c.get(context.Background())
	if now, _ := c.renew(context.Background(), old); now != fresh || src.calls.Load() != 2 {
		t.Fatal("refusing an old value dropped the newer one")
	}
}

// TestCacheStaleIfError: when a refresh fails, a value that does not die
// (a secret) is kept, also past its expiry, until it is refused.
func TestCacheStaleIfError(t *testing.T) {
	clock := newFakeClock("12:00:00")
	src := &countingSource{ttl: time.Hour, lasting: true}
	c := newTestCache(t, src, clock)
	first, _ := c.get(context.Background())

	src.failWith(errors.New("500 internal error"))
	clock.Set("13:00:01") // past expiry
	e, err := c.get(context.Background())
	if err != nil || e != first {
		t.Fatalf("after a failed refresh got %v, %v; want the old value", e, err)
	}
	calls := src.calls.Load()
	for range 10 {
		if e, _ := c.get(context.Background()); e != first {
			t.Fatal("stale value not served")
		}
	}
	waitIdle(t, c)
	if src.calls.Load() != calls {
		t.Fatalf("%d more fetches while stale within the retry pause, want none",
			src.calls.Load()-calls)
	}

	// After the pause one background refresh; once it works, the new value.
	src.failWith(nil)
	clock.Advance(staleRetry)
	c.get(context.Background())
	waitIdle(t, c)
	if got := mustGet(t, c); got == first.cred.password {
		t.Fatal("a successful refresh did not replace the stale value")
	}

	// A refused stale value is dropped: the error comes through.
	cur := c.cur.Load()
	src.failWith(errors.New("throttled"))
	if _, err := c.renew(context.Background(), cur); err == nil {
		t.Fatal("after the server refused the only value, get succeeded")
	}
}

// TestCacheCanceledCaller: a caller that gives up gets its context's error
// and does not fail the others waiting for the same fetch.
func TestCacheCanceledCaller(t *testing.T) {
	src := &countingSource{ttl: time.Hour, gate: make(chan struct{})}
	c := newTestCache(t, src, newFakeClock("12:00:00"))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	other := make(chan error, 1)
	go func() {
		time.Sleep(5 * time.Millisecond)
		_, err := c.get(context.Background())
		other <- err
	}()
	if _, err := c.get(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("canceled caller got %v, want context.DeadlineExceeded", err)
	}
	close(src.gate)
	if err := <-other; err != nil {
		t.Fatalf("the other caller got %v", err)
	}
	if src.calls.Load() != 1 {
		t.Fatalf("%d fetches, want 1", src.calls.Load())
	}
}

// TestCacheLoneCanceledCaller: when the only caller gives up, the fetch is
// canceled and forgotten; the next caller starts a new one.
func TestCacheLoneCanceledCaller(t *testing.T) {
	src := &countingSource{ttl: time.Hour, gate: make(chan struct{})}
	c := newTestCache(t, src, newFakeClock("12:00:00"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.get(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	waitIdle(t, c)
	close(src.gate)
	if _, err := c.get(context.Background()); err != nil {
		t.Fatalf("next get inherited the canceled fetch: %v", err)
	}
	for deadline := time.Now().Add(time.Second); src.calls.Load() < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("%d fetches, want the canceled one and a new one", src.calls.Load())
		}
		time.Sleep(time.Millisecond)
	}
}

func TestFileSource(t *testing.T) {
	path := filepath.Join(t.TempDir(), "password")
	src := fileSource{path: path}
	now := time.Now()
	if _, err := src.fetch(context.Background(), now); err == nil {
		t.Fatal("a missing file gave no error")
	}
	os.WriteFile(path, []byte("  \n"), 0o600)
	if _, err := src.fetch(context.Background(), now); err == nil {
		t.Fatal("an empty file gave no error")
	}
	os.WriteFile(path, []byte("p@ss:w/rd?&#%\n"), 0o600)
	cred, err := src.fetch(context.Background(), now)
	if err != nil || cred.password != "p@ss:w/rd?&#%" {
		t.Fatalf("fetch = %q, %v", cred.password, err)
	}
	if !cred.expires.Equal(now.Add(fileTTL)) {
		t.Fatalf("expires %v, want %v", cred.expires, now.Add(fileTTL))
	}
}

// TestCacheDenialSkipsOlderFetch: after a refusal, a fetch that was already
// in flight (it may have read the value before a rotation) is not joined;
// a new fetch is made, and only one however many connections were refused.
func TestCacheDenialSkipsOlderFetch(t *testing.T) {
	clock := newFakeClock("12:00:00")
	src := &countingSource{ttl: 10 * time.Minute}
	c := newTestCache(t, src, clock)
	first, _ := c.get(context.Background())

	src.gate = make(chan struct{})
	clock.Set("12:09:00") // refresh-ahead starts a background fetch, held at the gate
	c.get(context.Background())
	c.mu.Lock()
	older := c.call
	c.mu.Unlock()
	if older == nil {
		t.Fatal("no background fetch in flight")
	}

	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := c.renew(context.Background(), first); err != nil {
				t.Error(err)
			}
		})
	}
	time.Sleep(20 * time.Millisecond)
	close(src.gate)
	wg.Wait()
	<-older.done
	if n := src.calls.Load(); n != 3 {
		t.Fatalf("%d fetches, want the first, the older background one and one new", n)
	}
	cur := c.cur.Load()
	if cur == nil || older.e == nil || cur.cred.password == older.e.cred.password ||
		cur.cred.password == first.cred.password {
		t.Fatalf("current value %v, want the one fetched after the refusal", cur)
	}
}

// TestCacheLastingValuePastExpiry: a value that does not die at expiry (a
// secret) is still handed out while its refresh hangs; callers never wait.
func TestCacheLastingValuePastExpiry(t *testing.T) {
	clock := newFakeClock("12:00:00")
	src := &countingSource{ttl: time.Hour, lasting: true}
	c := newTestCache(t, src, clock)
	first := mustGet(t, c)

	src.gate = make(chan struct{}) // the refresh hangs
	clock.Set("13:30:00")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	e, err := c.get(ctx)
	if err != nil || e.cred.password != first {
		t.Fatalf("past expiry with a hanging refresh got %v, %v; want the old value", e, err)
	}
	start := time.Now()
	if e, err := c.get(context.Background()); err != nil || e.cred.password != first {
		t.Fatalf("second caller got %v, %v; want the old value", e, err)
	}
	if waited := time.Since(start); waited >= lastingWait {
		t.Fatalf("second caller waited %v for a hanging refresh", waited)
	}
	if n := src.calls.Load(); n != 2 {
		t.Fatalf("%d fetches, want the first and one refresh", n)
	}
	close(src.gate)
	waitIdle(t, c)
	if got := mustGet(t, c); got == first {
		t.Fatal("the background refresh did not replace the value")
	}
}

// TestCacheDeadValueNotStale: a value that dies at expiry (an IAM token) is
// never handed out past it, even when its refresh fails.
func TestCacheDeadValueNotStale(t *testing.T) {
	clock := newFakeClock("12:00:00")
	src := &countingSource{ttl: 10 * time.Minute}
	c := newTestCache(t, src, clock)
	mustGet(t, c)
	boom := errors.New("credentials unavailable")
	src.failWith(boom)
	clock.Set("12:10:01")
	for range 3 {
		if e, err := c.get(context.Background()); !errors.Is(err, boom) {
			t.Fatalf("past expiry with a failing refresh got %v, %v; want the error", e, err)
		}
	}
}
