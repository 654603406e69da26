package main

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// Messages rdsconn logs that check and demo count. They are the library's
// own text; the demo's test fails if the library changes them.
const (
	msgTokenBuilt    = "rdsconn: IAM token built"
	msgSecretFetched = "rdsconn: secret fetched"
	msgRetried       = "rdsconn: access denied; fetching a new password and retrying once"
	msgPendingWorked = "rdsconn: the AWSPENDING version of the secret was accepted; " +
		"rotation in progress"
)

// logEvent is one record rdsconn logged, with its attributes as text.
// rdsconn never logs a password, token or secret value.
type logEvent struct {
	time  time.Time
	msg   string
	attrs map[string]string
}

// logRecorder is a slog.Handler that keeps what rdsconn logs, so that check
// and demo can count and explain it, and passes each record on to next
// when set (for -v).
type logRecorder struct {
	next slog.Handler

	mu     sync.Mutex
	events []logEvent
}

// logRecorderView is a logRecorder seen through WithAttrs.
type logRecorderView struct {
	r     *logRecorder
	next  slog.Handler
	attrs []slog.Attr
}

func newLogRecorder(next slog.Handler) *logRecorder { return &logRecorder{next: next} }

// handler returns the slog.Handler to give rdsconn.WithLogger.
func (r *logRecorder) handler() slog.Handler { return &logRecorderView{r: r, next: r.next} }

// count returns how many records with the message were logged.
func (r *logRecorder) count(msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.events {
		if e.msg == msg {
			n++
		}
	}
	return n
}

// all returns a copy of the records logged so far.
func (r *logRecorder) all() []logEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

func (v *logRecorderView) Enabled(context.Context, slog.Level) bool { return true }

func (v *logRecorderView) Handle(ctx context.Context, rec slog.Record) error {
	e := logEvent{time: rec.Time, msg: rec.Message, attrs: map[string]string{}}
	for _, a := range v.attrs {
		e.attrs[a.Key] = a.Value.String()
	}
	rec.Attrs(func(a slog.Attr) bool {
		e.attrs[a.Key] = a.Value.String()
		return true
	})
	v.r.mu.Lock()
	v.r.events = append(v.r.events, e)
	v.r.mu.Unlock()
	if v.next != nil && v.next.Enabled(ctx, rec.Level) {
		return v.next.Handle(ctx, rec)
	}
	return nil
}

func (v *logRecorderView) WithAttrs(attrs []slog.Attr) slog.Handler {
	w := &logRecorderView{r: v.r, next: v.next, attrs: append(slices.Clone(v.attrs), attrs...)}
	if w.next != nil {
		w.next = w.next.WithAttrs(attrs)
	}
	return w
}

// WithGroup keeps the records flat: rdsconn logs no groups.
func (v *logRecorderView) WithGroup(string) slog.Handler { return v }
