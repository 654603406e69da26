package rdsconn

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
)

// awsState loads the AWS config at the first Connect that needs it and
// remembers the regions it resolved. Failures are not remembered, so a
// Connect after a transient failure tries again.
type awsState struct {
	given   *aws.Config // WithAWSConfig
	regions *regionFinder
	log     *slog.Logger

	mu       ctxMutex // guards the fields below
	cfg      *aws.Config
	endpoint *regionSource // region for the database endpoint, once found
}

// ctxMutex is a mutex whose waiters give up when their context ends, for
// locks held across a config load or an instance-metadata probe. Make it
// with make(ctxMutex, 1).
type ctxMutex chan struct{}

// lock takes the mutex, or returns the context's error.
func (m ctxMutex) lock(ctx context.Context) error {
	select {
	case m <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("rdsconn: waiting for the AWS config or region: %w", ctx.Err())
	}
}

func (m ctxMutex) unlock() { <-m }

// config returns the AWS config, loading the default one the first time.
func (a *awsState) config(ctx context.Context) (aws.Config, error) {
	if err := a.mu.lock(ctx); err != nil {
		return aws.Config{}, err
	}
	defer a.mu.unlock()
	return a.configLocked(ctx)
}

func (a *awsState) configLocked(ctx context.Context) (aws.Config, error) {
	if a.cfg != nil {
		return *a.cfg, nil
	}
	if a.given != nil {
		a.cfg = a.given
		return *a.cfg, nil
	}
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return aws.Config{}, fmt.Errorf("loading the default AWS config: %w", err)
	}
	a.cfg = &cfg
	return cfg, nil
}

// forEndpoint returns the AWS config and the region for the database
// endpoint, resolving and logging the region once.
func (a *awsState) forEndpoint(ctx context.Context) (aws.Config, string, error) {
	cfg, rs, err := a.forEndpointSource(ctx)
	if err != nil {
		return aws.Config{}, "", err
	}
	if cfg.Credentials == nil {
		return aws.Config{}, "", configError("the AWS config has no credentials provider")
	}
	return cfg, rs.region, nil
}

// forEndpointSource is forEndpoint that also says where the region came from.
func (a *awsState) forEndpointSource(ctx context.Context) (aws.Config, regionSource, error) {
	if err := a.mu.lock(ctx); err != nil {
		return aws.Config{}, regionSource{}, err
	}
	defer a.mu.unlock()
	cfg, err := a.configLocked(ctx)
	if err != nil {
		return aws.Config{}, regionSource{}, err
	}
	if a.endpoint == nil {
		rs, err := a.regions.find(ctx, cfg, "")
		if err != nil {
			return aws.Config{}, regionSource{}, err
		}
		a.endpoint = &rs
		a.log.Info("rdsconn: region found", "region", rs.region, "from", rs.from)
	}
	return cfg, *a.endpoint, nil
}
