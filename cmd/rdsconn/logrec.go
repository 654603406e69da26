package main

import (
	"context"
	"log/slog"
	"strings"
	"sync"
)

// Events of rdsconn's log that check and demo count. The library exports
// no names for them, so they are told by words of its messages that its
// wording keeps; the demo, and so its test, fails if that changes.
const (
	evTokenBuilt = "token built"   // "rdsconn: IAM token built"
	evRetried    = "access denied" // "rdsconn: access denied; fetching a new password ..."
	evPending    = "AWSPENDING"    // "rdsconn: ... the AWSPENDING version ...: rotation ..."
)

// eventOf returns the event a log message reports, or "".
func eventOf(msg string) string {
	for _, ev := range []string{evTokenBuilt, evRetried} {
		if strings.Contains(msg, ev) {
			return ev
		}
	}
	// rdsconn logs "secret fetched" for every stage; only using AWSPENDING
	// mentions it in the message.
	if strings.Contains(msg, evPending) && strings.Contains(msg, "rotation") {
		return evPending
	}
	return ""
}

// logRecorder counts the events rdsconn logs, so that check and demo can
// tell what the library did, and passes each record on to next when set
// (for -v). rdsconn never logs a password, token or secret value.
type logRecorder struct {
	next slog.Handler

	mu     sync.Mutex
	counts map[string]int
}

func newLogRecorder(next slog.Handler) *logRecorder {
	return &logRecorder{next: next, counts: map[string]int{}}
}

// handler returns the slog.Handler to give rdsconn.WithLogger.
func (r *logRecorder) handler() slog.Handler { return &logRecorderView{r: r, next: r.next} }

// count returns how many times the event was logged.
func (r *logRecorder) count(event string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts[event]
}

// logRecorderView is the logRecorder as a slog.Handler, with the next
// handler as WithAttrs made it.
type logRecorderView struct {
	r    *logRecorder
	next slog.Handler
}

func (v *logRecorderView) Enabled(context.Context, slog.Level) bool { return true }

func (v *logRecorderView) Handle(ctx context.Context, rec slog.Record) error {
	if ev := eventOf(rec.Message); ev != "" {
		v.r.mu.Lock()
		v.r.counts[ev]++
		v.r.mu.Unlock()
	}
	if v.next != nil && v.next.Enabled(ctx, rec.Level) {
		return v.next.Handle(ctx, rec)
	}
	return nil
}

func (v *logRecorderView) WithAttrs(attrs []slog.Attr) slog.Handler {
	if v.next == nil {
		return v
	}
	return &logRecorderView{r: v.r, next: v.next.WithAttrs(attrs)}
}

// WithGroup keeps the records flat: rdsconn logs no groups.
func (v *logRecorderView) WithGroup(string) slog.Handler { return v }
