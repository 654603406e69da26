package rdsconn

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
)

func errorIsConfig(err error) bool   { return errors.Is(err, ErrConfig) }
func errorIsDeadline(err error) bool { return errors.Is(err, context.DeadlineExceeded) }

// withClock makes the connector read time from now.
func withClock(now func() time.Time) Option {
	return func(s *settings) { s.now = now }
}

// withTokenBuilder replaces auth.BuildAuthToken.
func withTokenBuilder(b tokenBuilder) Option {
	return func(s *settings) { s.buildToken = b }
}

type awsCredentialsProvider = aws.CredentialsProvider

// staticAWSConfig is an AWS config with fixed credentials and no region.
func staticAWSConfig(akid, secret, session string) aws.Config {
	return aws.Config{
		Credentials: credentials.NewStaticCredentialsProvider(akid, secret, session),
	}
}

// forget drops the current value and any fetch in flight, so that the next
// get fetches afresh.
func (c *cache) forget() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cur.Store(nil)
	c.stale = false
	c.call = nil
}

// connectBurst calls c.Connect from n goroutines released at once, closes
// the connections that open, and returns the errors of those that failed.
func connectBurst(c *Connector, n int) []error {
	start := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for range n {
		wg.Go(func() {
			<-start
			conn, err := c.Connect(context.Background())
			if err == nil {
				conn.Close()
				return
			}
			mu.Lock()
			defer mu.Unlock()
			errs = append(errs, err)
		})
	}
	close(start)
	wg.Wait()
	return errs
}
