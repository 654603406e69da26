package rdsconn

import (
	"context"
	"errors"
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
