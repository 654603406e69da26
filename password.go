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

	// maxPasswordFile is the largest password file read.
	maxPasswordFile = 64 << 10

	// backgroundTimeout bounds a refresh that no caller waits for.
	backgroundTimeout = time.Minute
	// staleRetry is how long a stale value is served after a failed refresh
	// before the next refresh is tried.
	staleRetry = 5 * time.Second
	// lastingWait is how long a caller waits for the refresh of an expired
	// value that still works (a secret, a file) before it is handed the
	// old value, while the refresh goes on in the background.
	lastingWait = 250 * time.Millisecond
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

// renewer is a source that can do better than a plain fetch once the server
// has refused one of its values: a secret in the middle of a rotation.
type renewer interface {
	// fetchAfterRefusal gets a password to replace refused.
	fetchAfterRefusal(ctx context.Context, now time.Time, refused credential) (credential, error)
}

// credential is one password from a source.
type credential struct {
	password string
	user     string // user name from a secret; "" keeps the DSN's
	version  string // secret version id, for logs and rotation checks
	pending  bool   // the AWSPENDING version of a secret
	// validUntil is when the server stops accepting an IAM token.
	validUntil time.Time
	// dies is set for a value that stops working at expires, an IAM token.
	// Other values (a secret, a file, a function's result) only stop
	// working when the server refuses them: past expires they are still
	// handed out while a refresh runs in the background.
	dies    bool
	stages  []string  // secret version's staging labels
	keys    []string  // names of the secret's JSON keys
	expires time.Time // not to be used from this moment on
}

// entry is a cached credential with the go-sql-driver connector built for it.
type entry struct {
	cred      credential
	conn      driver.Connector
	gen       uint64
	refreshAt int64 // wall-clock Unix ns: refresh in the background from here
	expires   int64 // wall-clock Unix ns: not to be handed out from here without a refresh
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
	// refused is the last value the server refused, until a fetch replaces
	// it: fetches started meanwhile tell the source, so that it can look
	// past a version it knows is refused.
	refused *credential
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
	if e != nil && now < e.refreshAt {
		c.mu.Unlock() // filled in since the fast path looked
		return e, nil
	}
	if e != nil && (now < e.expires || c.stale && !e.cred.dies) {
		// Still usable: hand it out and refresh ahead in the background, so
		// that no caller waits for a fetch while a value is good.
		if c.call == nil && now >= c.nextRetry {
			c.start(ctx, true)
		}
		c.mu.Unlock()
		return e, nil
	}
	if e != nil && !e.cred.dies {
		return c.waitLasting(ctx, e)
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

// waitLasting refreshes an expired value that still works until the server
// refuses it. The caller waits for the refresh a short time at most, so that
// a file read or a prompt Secrets Manager answer is used at once, while a
// hanging one costs one caller lastingWait and nobody more. c.mu is held on
// entry and released.
func (c *cache) waitLasting(ctx context.Context, e *entry) (*entry, error) {
	call := c.call
	if call == nil {
		call = c.start(ctx, true)
	}
	c.mu.Unlock()

	timer := time.NewTimer(lastingWait)
	defer timer.Stop()
	select {
	case <-call.done:
		if call.err == nil {
			return call.e, nil
		}
	case <-timer.C:
	case <-ctx.Done():
	}
	c.mu.Lock()
	if c.cur.Load() == e {
		c.stale = true // later callers use e without waiting
	}
	c.mu.Unlock()
	return e, nil
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
	refused := c.refused
	go func() {
		defer close(call.done)
		e, err := c.fetch(fctx, refused)
		stop()
		cancel()
		c.finish(call, e, err)
	}()
	return call
}

// fetch gets a credential from the source and builds its connector.
func (c *cache) fetch(ctx context.Context, refused *credential) (*entry, error) {
	now := c.now()
	var cred credential
	var err error
	if r, ok := c.src.(renewer); ok && refused != nil {
		cred, err = r.fetchAfterRefusal(ctx, now, *refused)
	} else {
		cred, err = c.src.fetch(ctx, now)
	}
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return nil, fmt.Errorf("rdsconn: getting the password from the %s: %w",
				c.src.describe(), err)
		}
		var fe *FetchError
		if !errors.As(err, &fe) && !errors.Is(err, ErrConfig) {
			err = &FetchError{Source: c.src.describe(), Err: err}
		}
		return nil, err
	}
	e, err := c.build(cred)
	if err != nil {
		return nil, err
	}
	fetched, expires := now.UnixNano(), cred.expires.UnixNano()
	e.refreshAt = fetched + (expires-fetched)*4/5
	e.expires = expires
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
		c.stale, c.nextRetry, c.refused = false, 0, nil
		call.e = e
		return
	}

	old := c.cur.Load()
	now := c.now().UnixNano()
	if old == nil || old.cred.dies && now >= old.expires {
		// Nothing to fall back on: a token past its reuse window is dead.
		call.err = err
		return
	}
	// Stale if error: the old value has not been refused by the server, so
	// keep using it until it is, and try again a little later.
	c.nextRetry = now + int64(staleRetry)
	if now >= old.expires {
		c.stale = true
	}
	c.log.Warn("rdsconn: refreshing the password failed; still using the current one",
		"source", c.src.describe(), "error", err)
	call.e = old
}

// renew replaces refused, a value the server just refused: it drops it
// unless a newer value has already replaced it, and returns the newer value
// or the result of a fetch that started after the refusal. Fifty
// connections refused together thus cause one fetch, not fifty. A fetch
// already in flight when the value is dropped is left to its waiters but
// not joined: it may have read the value before a rotation.
func (c *cache) renew(ctx context.Context, refused *entry) (*entry, error) {
	c.mu.Lock()
	if c.cur.Load() == refused {
		c.cur.Store(nil)
		c.stale = false
		c.call = nil
		c.refused = &refused.cred
	}
	c.mu.Unlock()
	return c.get(ctx)
}

// replace makes e the current value, as after a successful fetch. A fetch
// in flight is left to its waiters but will not overwrite e.
func (c *cache) replace(e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	e.gen = c.gen
	c.cur.Store(e)
	c.stale, c.nextRetry, c.refused, c.call = false, 0, nil, nil
}

// drop forgets e if it is still the current value, after the server refused
// it and no retry is left.
func (c *cache) drop(e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur.Load() == e {
		c.cur.Store(nil)
		c.stale = false
		c.call = nil
		c.refused = &e.cred
	}
}

// fileSource reads the password from a file.
type fileSource struct{ path string }

func (s fileSource) describe() string { return fmt.Sprintf("password file %q", s.path) }

func (s fileSource) fetch(_ context.Context, now time.Time) (credential, error) {
	// Only a regular file (after symbolic links, as Kubernetes swaps them):
	// a FIFO or a device could block or never end.
	info, err := os.Stat(s.path)
	if err != nil {
		return credential{}, err
	}
	if !info.Mode().IsRegular() {
		return credential{}, errors.New("not a regular file")
	}
	if info.Size() > maxPasswordFile {
		return credential{}, fmt.Errorf("the file is larger than %d bytes", maxPasswordFile)
	}
	b, err := os.ReadFile(s.path)
	if err != nil {
		return credential{}, err
	}
	pw := strings.TrimSpace(strings.TrimPrefix(string(b), "\ufeff"))
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
