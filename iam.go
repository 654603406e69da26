package rdsconn

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/rds/auth"
)

const (
	// tokenReuse is how long one IAM token is handed out. RDS accepts a
	// token for 15 minutes after it is signed; stopping at 10 leaves room
	// for clock skew between this host and the database.
	tokenReuse = 10 * time.Minute
	// credentialMargin is how long before its credentials expire a token
	// stops being used: a presigned token dies with its credentials.
	credentialMargin = time.Minute
	// tokenLifetime is how long RDS accepts a token after it is signed.
	tokenLifetime = 15 * time.Minute
)

// tokenBuilder builds an RDS IAM token; auth.BuildAuthToken in production.
type tokenBuilder func(ctx context.Context, endpoint, region, user string,
	creds aws.CredentialsProvider) (string, error)

func buildAuthToken(ctx context.Context, endpoint, region, user string,
	creds aws.CredentialsProvider) (string, error) {
	return auth.BuildAuthToken(ctx, endpoint, region, user, creds)
}

// iamSource builds RDS IAM authentication tokens.
type iamSource struct {
	endpoint string // host:port the token is signed for
	user     string
	build    tokenBuilder
	aws      *awsState
	log      *slog.Logger
}

func (s *iamSource) describe() string {
	return fmt.Sprintf("IAM token for user %q at %s", s.user, s.endpoint)
}

func (s *iamSource) fetch(ctx context.Context, now time.Time) (credential, error) {
	cfg, region, err := s.aws.forEndpoint(ctx)
	if err != nil {
		return credential{}, err
	}

	// Retrieve the credentials here rather than inside BuildAuthToken, to
	// learn when they expire: the token must not outlive them.
	creds, err := cfg.Credentials.Retrieve(ctx)
	if err != nil {
		return credential{}, fmt.Errorf("retrieving AWS credentials: %w", err)
	}
	token, err := s.build(ctx, s.endpoint, region, s.user, staticCredentials{creds})
	if err != nil {
		return credential{}, fmt.Errorf("building the token: %w", err)
	}

	expires := now.Add(tokenReuse)
	if creds.CanExpire {
		margin := min(credentialMargin, creds.Expires.Sub(now)/2)
		expires = minTime(expires, creds.Expires.Add(-margin))
	}
	s.log.Info("rdsconn: IAM token built", "endpoint", s.endpoint, "user", s.user,
		"region", region, "reuse_until", expires.UTC().Format(time.RFC3339))
	return credential{password: token, expires: expires, dies: true,
		validUntil: now.Add(tokenLifetime)}, nil
}

func (s *iamSource) hints() []string {
	return []string{
		"the IAM identity lacks rds-db:connect on this database user",
		"the database user was not created WITH AWSAuthenticationPlugin AS 'RDS'",
		"the token was signed for another host name (a CNAME: use WithIAMEndpoint) or region",
		"this host's clock is off by minutes",
	}
}

// staticCredentials hands already retrieved credentials to the token builder.
type staticCredentials struct{ v aws.Credentials }

func (s staticCredentials) Retrieve(context.Context) (aws.Credentials, error) { return s.v, nil }

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
