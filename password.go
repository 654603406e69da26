package rdsconn

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// How long each kind of password is reused. A token's own limit is set in
// iam.go; a secret's in secret.go.
const (
	fileTTL = time.Minute
	funcTTL = 5 * time.Minute

	// backgroundTimeout bounds a refresh that no caller waits for.
	backgroundTimeout = time.Minute
	// staleRetry is how long a stale value is served after a failed refresh
	// before the next refresh is tried.
	staleRetry = 5 * time.Second
)

// source produces passwords: an IAM token builder, a secret, a file or the
// caller's function.
type source interface {
	// describe names the source for errors and logs, without any value.
	describe() string
	// fetch gets a password and says until when it may be used.
	fetch(ctx context.Context, now time.Time) (credential, error)
	// hints lists the usual causes of an access-denied error for this source.
	hints() []string
}

// credential is one password from a source.
type credential struct {
	password string
	user     string    // user name from a secret; "" keeps the DSN's
	version  string    // secret version id, for logs and rotation checks
	stages   []string  // secret version's staging labels
	keys     []string  // names of the secret's JSON keys
	expires  time.Time // not to be used from this moment on
}

// entry is a cached credential with the go-sql-driver connector built for it.
type entry struct {
	cred      credential
	conn      driver.Connector
	gen       uint64
	refreshAt int64 // wall-clock Unix ns: refresh in the background from here
	expires   int64 // wall-clock Unix ns: never hand out from here
}

// fetchCall is one fetch shared by every caller that needs it.
type fetchCall struct {
	done       chan struct{}
	e          *entry
	err        error
	waiters    int
	background bool
	cancel     context.CancelFunc
}

// cache holds the current password and makes sure concurrent callers share
// one fetch. The fast path is a single atomic load and a clock read.
type cache struct {
	src     source
	build   func(credential) (*entry, error) // makes the driver connector
	now     func() time.Time
	log     *slog.Logger
	closing context.Context // canceled by Connector.Close

	cur atomic.Pointer[entry]

	mu        sync.Mutex
	call      *fetchCall // the fetch in flight, if any
	gen       uint64
	stale     bool  // cur is past expiry and kept because a refresh failed
	nextRetry int64 // while stale, no refresh before this (Unix ns)
}

// get returns a usable password, fetching one when there is none.
func (c *cache) get(ctx context.Context) (*entry, error) {
	now := c.now().UnixNano()
	if e := c.cur.Load(); e != nil && now < e.refreshAt {
		return e, nil
	}
	return c.getSlow(ctx, now)
}

func (c *cache) getSlow(ctx context.Context, now int64) (*entry, error) {
	c.mu.Lock()
	e := c.cur.Load()
	if e != nil && (now < e.expires || c.stale) {
		// Still usable: hand it out and refresh ahead in the background, so
		// that no caller waits for a fetch while a value is good.
		if c.call == nil && now >= c.nextRetry {
			c.start(ctx, true)
		}
		c.mu.Unlock()
		return e, nil
	}
	call := c.call
	if call == nil {
		call = c.start(ctx, false)
	}
	call.waiters++
	c.mu.Unlock()

	select {
	case <-call.done:
		return call.e, call.err
	case <-ctx.Done():
		c.leave(call)
		return nil, fmt.Errorf("rdsconn: waiting for the password from the %s: %w",
			c.src.describe(), ctx.Err())
	}
}

// leave is called by a waiter that gave up. The last one to leave cancels a
// fetch that only waiters wanted, and forgets it so that the next caller
// starts afresh instead of inheriting a canceled fetch.
func (c *cache) leave(call *fetchCall) {
	c.mu.Lock()
	defer c.mu.Unlock()
	call.waiters--
	if call.waiters == 0 && !call.background {
		if c.call == call {
			c.call = nil
		}
		call.cancel()
	}
}

// start begins a fetch; c.mu must be held. The fetch runs on a context that
// keeps the caller's values but not its cancellation, so that one caller
// giving up does not fail the others; Close cancels it.
func (c *cache) start(ctx context.Context, background bool) *fetchCall {
	fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	if background {
		fctx, cancel = context.WithTimeout(fctx, backgroundTimeout)
	}
	stop := context.AfterFunc(c.closing, cancel)
	call := &fetchCall{done: make(chan struct{}), background: background, cancel: cancel}
	c.call = call
	go func() {
		defer close(call.done)
		e, err := c.fetch(fctx)
		stop()
		cancel()
		c.finish(call, e, err)
	}()
	return call
}

// fetch gets a credential from the source and builds its connector.
func (c *cache) fetch(ctx context.Context) (*entry, error) {
	now := c.now()
	cred, err := c.src.fetch(ctx, now)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return nil, fmt.Errorf("rdsconn: getting the password from the %s: %w",
				c.src.describe(), err)
		}
		var fe *FetchError
		if !errors.As(err, &fe) {
			err = &FetchError{Source: c.src.describe(), Err: err}
		}
		return nil, err
	}
	e, err := c.build(cred)
	if err != nil {
		return nil, err
	}
	fetched, expires := now.UnixNano(), cred.expires.UnixNano()
	e.expires = expires
	e.refreshAt = fetched + (expires-fetched)*4/5
	return e, nil
}

// finish records the outcome of a fetch. A fetch that was abandoned (no
// longer c.call) records nothing, so it cannot overwrite a newer value.
func (c *cache) finish(call *fetchCall, e *entry, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.call != call {
		call.err = err
		if err == nil {
			call.e = e
		}
		return
	}
	c.call = nil
	if err == nil {
		c.gen++
		e.gen = c.gen
		c.cur.Store(e)
		c.stale, c.nextRetry = false, 0
		call.e = e
		return
	}

	old := c.cur.Load()
	if old == nil {
		call.err = err
		return
	}
	// Stale if error: the old value has not been refused by the server, so
	// keep using it until it is, and try again a little later.
	c.nextRetry = c.now().Add(staleRetry).UnixNano()
	if c.now().UnixNano() >= old.expires {
		c.stale = true
	}
	c.log.Warn("rdsconn: refreshing the password failed; still using the current one",
		"source", c.src.describe(), "error", err)
	call.e = old
}

// invalidate drops the cached value e after the server refused it, unless a
// newer one has already replaced it. Fifty connections refused together thus
// cause one fetch, not fifty. A fetch already in flight is left to its
// waiters but not joined by later callers: it may have read the value before
// a rotation, so the next get starts a fetch that is sure to be newer.
func (c *cache) invalidate(e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur.Load() != e {
		return
	}
	c.cur.Store(nil)
	c.stale = false
	c.call = nil
}

// replace makes e the current value, as after a successful fetch.
func (c *cache) replace(e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	e.gen = c.gen
	c.cur.Store(e)
	c.stale = false
}

// fileSource reads the password from a file.
type fileSource struct{ path string }

func (s fileSource) describe() string { return fmt.Sprintf("password file %q", s.path) }

func (s fileSource) fetch(_ context.Context, now time.Time) (credential, error) {
	b, err := os.ReadFile(s.path)
	if err != nil {
		return credential{}, err
	}
	pw := strings.TrimSpace(string(b))
	if pw == "" {
		return credential{}, errors.New("the file is empty")
	}
	return credential{password: pw, expires: now.Add(fileTTL)}, nil
}

func (s fileSource) hints() []string {
	return []string{"the file holds an old password (a mounted secret is updated with a delay)"}
}

// funcSource calls the caller's function.
type funcSource struct {
	fn func(ctx context.Context) (string, error)
}

func (funcSource) describe() string { return "password function" }

func (s funcSource) fetch(ctx context.Context, now time.Time) (credential, error) {
	pw, err := s.fn(ctx)
	if err != nil {
		return credential{}, err
	}
	if pw == "" {
		return credential{}, errors.New("the function returned an empty password")
	}
	return credential{password: pw, expires: now.Add(funcTTL)}, nil
}

func (funcSource) hints() []string {
	return []string{"the function returns a password the server no longer accepts"}
}
