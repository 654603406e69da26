package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Step statuses.
const (
	statusOK   = "ok"
	statusWarn = "warn"
	statusFail = "FAIL"
	statusSkip = "skip"
)

// The steps of check, numbered as the exit status reports them.
const (
	stepEndpoint = iota + 1
	stepRegion
	stepTLS
	stepCredentials
	stepPassword
	stepConnection
)

var stepNames = map[int]string{
	stepEndpoint:    "endpoint",
	stepRegion:      "region",
	stepTLS:         "tls",
	stepCredentials: "credentials",
	stepPassword:    "password",
	stepConnection:  "connection",
}

// step is the outcome of one step of check. It never holds a password,
// token or secret value.
type step struct {
	Number  int            `json:"number"`
	Name    string         `json:"name"`
	Status  string         `json:"status"`
	Summary string         `json:"summary"`
	Facts   map[string]any `json:"facts,omitempty"`
	Notes   []string       `json:"notes,omitempty"`
	Error   string         `json:"error,omitempty"`
	Cause   string         `json:"cause,omitempty"`
	Why     string         `json:"why,omitempty"`
	Advice  []string       `json:"advice,omitempty"`
}

// report is the whole outcome of check, as -json prints it.
type report struct {
	OK         bool    `json:"ok"`
	Exit       int     `json:"exit"`
	FailedStep string  `json:"failed_step,omitempty"`
	Cause      string  `json:"cause,omitempty"`
	Steps      []*step `json:"steps"`
}

// reporter prints each step as it ends, as text, or collects the steps
// and prints one JSON object at the end.
type reporter struct {
	w       io.Writer
	json    bool
	verbose bool
	rep     report
}

// add records a finished step and prints it in text mode.
func (r *reporter) add(s *step) {
	s.Name = stepNames[s.Number]
	r.rep.Steps = append(r.rep.Steps, s)
	if s.Status == statusFail && r.rep.FailedStep == "" {
		r.rep.FailedStep, r.rep.Exit, r.rep.Cause = s.Name, s.Number, s.Cause
	}
	if r.json {
		return
	}
	fmt.Fprintf(r.w, "%d %-12s %-5s %s\n", s.Number, s.Name, s.Status, s.Summary)
	const indent = "                     "
	if r.verbose {
		keys := make([]string, 0, len(s.Facts))
		for k := range s.Facts {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(r.w, "%s%s: %v\n", indent, k, s.Facts[k])
		}
	}
	for _, n := range s.Notes {
		fmt.Fprintf(r.w, "%snote: %s\n", indent, n)
	}
	if s.Error != "" {
		fmt.Fprintf(r.w, "%serror: %s\n", indent, s.Error)
	}
	if s.Cause != "" {
		fmt.Fprintf(r.w, "%scause: %s (%s)\n", indent, s.Why, s.Cause)
	}
	for _, a := range s.Advice {
		fmt.Fprintf(r.w, "%sadvice: %s\n", indent, a)
	}
}

// finish prints the verdict, or the JSON object, and returns the exit
// status.
func (r *reporter) finish() int {
	r.rep.OK = r.rep.FailedStep == ""
	if r.json {
		enc := json.NewEncoder(r.w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(r.rep)
		return r.rep.Exit
	}
	if r.rep.OK {
		fmt.Fprintln(r.w, "ok: every step passed")
	} else {
		fmt.Fprintf(r.w, "failed at step %d (%s): exit status %d\n", r.rep.Exit,
			r.rep.FailedStep, r.rep.Exit)
	}
	return r.rep.Exit
}

// utc formats a time for output.
func utc(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// maskKey shows only the last four characters of an access key id, as the
// AWS CLI does.
func maskKey(id string) string {
	if len(id) <= 4 {
		return strings.Repeat("*", len(id))
	}
	return strings.Repeat("*", len(id)-4) + id[len(id)-4:]
}
