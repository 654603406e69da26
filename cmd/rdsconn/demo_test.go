package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestDemo(t *testing.T) {
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	var (
		mu      sync.Mutex
		secrets []string
	)
	e := env{now: time.Now, newSecret: func() string {
		mu.Lock()
		defer mu.Unlock()
		s := fmt.Sprintf("demo-secret-%d-must-not-leak", len(secrets))
		secrets = append(secrets, s)
		return s
	}}
	var stdout, stderr bytes.Buffer
	start := time.Now()
	code := run(context.Background(), []string{"demo", "-v"}, &stdout, &stderr, e)
	out := stdout.String() + stderr.String()
	if code != 0 {
		t.Fatalf("demo exited %d\n%s", code, out)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("demo took %s", d)
	}
	for _, w := range []string{"0 broken", "0 failed", "2 tokens built", evTokenBuilt} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q\n%s", w, out)
		}
	}
	if len(secrets) < 6 {
		t.Fatalf("the demo made %d secrets, want at least 6", len(secrets))
	}
	for _, s := range append(secrets, "X-Amz-Signature", "Action=connect") {
		if strings.Contains(out, s) {
			t.Errorf("output shows %q\n%s", s, out)
		}
	}
}
