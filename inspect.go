package rdsconn

import (
	"context"
	"net"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// Plan describes what a Connector will do, as decided by New without
// contacting AWS or the database. Tools such as the rdsconn command use it
// to explain a connection step by step.
type Plan struct {
	// Err is the configuration error every Connect returns, or nil.
	Err error
	// Endpoint is the host:port that IAM tokens are signed for and whose
	// name decides the region and auto TLS.
	Endpoint string
	// Addr is the address dialled (the DSN's).
	Addr string
	// User is the database user from the DSN; a secret may supply one.
	User string
	// Kind is the kind of RDS endpoint ("instance", "cluster",
	// "cluster reader", "cluster custom", "proxy", "limitless shard
	// group", "global database writer"), or "" when Endpoint is not an RDS
	// name.
	Kind string
	// Source describes where passwords come from, such as
	// `IAM token for user "app" at host:3306`, or "the DSN's password".
	Source string
	// TLS is on when connections use TLS.
	TLS bool
	// AutoTLS is on when rdsconn turned TLS on for an RDS endpoint name.
	AutoTLS bool
	// ServerName is the name the server certificate is verified against.
	ServerName string
	// EmbeddedRoots is on when auto TLS verifies against the embedded
	// Amazon RDS roots rather than WithRootCAs's pool.
	EmbeddedRoots bool
}

// Plan returns what the Connector will do. It never fails; a configuration
// error is in Plan.Err, and the other fields then hold what was decided
// before the error was found.
func (c *Connector) Plan() Plan {
	p := Plan{Err: c.err, Source: "the DSN's password"}
	if c.base == nil {
		return p
	}
	p.Endpoint, p.Addr, p.User = c.endpoint, c.base.Addr, c.base.User
	if host, _, err := net.SplitHostPort(c.endpoint); err == nil {
		if _, kind, ok := parseEndpoint(host); ok {
			p.Kind = kind
		} else if isGlobalEndpoint(host) {
			p.Kind = kindGlobal
		}
	}
	if c.source != nil {
		p.Source = c.source.describe()
	}
	p.TLS = c.base.TLS != nil || (c.base.TLSConfig != "" && c.base.TLSConfig != "false")
	p.AutoTLS, p.EmbeddedRoots = c.tlsHost != "", c.embeddedCAs
	if c.base.TLS != nil && !c.base.TLS.InsecureSkipVerify {
		p.ServerName = c.base.TLS.ServerName
		if p.ServerName == "" {
			p.ServerName, _, _ = net.SplitHostPort(c.base.Addr)
		}
	}
	return p
}

// Region returns the AWS region the Connector signs IAM tokens for (and
// uses for Secrets Manager unless the secret's ARN names another), and
// where it came from, resolving it as Connect does.
func (c *Connector) Region(ctx context.Context) (region, from string, err error) {
	if c.err != nil {
		return "", "", c.err
	}
	_, rs, err := c.aws.forEndpointSource(ctx)
	return rs.region, rs.from, err
}

// AWSConfig returns the AWS config the Connector uses, loading the default
// one as the first Connect would.
func (c *Connector) AWSConfig(ctx context.Context) (aws.Config, error) {
	if c.err != nil {
		return aws.Config{}, c.err
	}
	return c.aws.config(ctx)
}

// PasswordInfo describes a password fetched by Refresh. It never holds the
// password itself.
type PasswordInfo struct {
	// Source describes where the password came from.
	Source string
	// User is the database user the password is for.
	User string
	// VersionID is the secret version, for Secrets Manager.
	VersionID string
	// Stages are the secret version's staging labels, for Secrets Manager.
	Stages []string
	// Keys are the names of the secret's JSON keys, for Secrets Manager.
	Keys []string
	// ReuseUntil is when the password stops being handed out without a
	// refresh.
	ReuseUntil time.Time
	// ValidUntil is when the server stops accepting an IAM token: 15
	// minutes after it was signed. It is zero for other sources.
	ValidUntil time.Time
}

// Refresh fetches a new password from the Connector's source now and, if
// that works, caches it for the next Connects and describes it. A failure
// leaves the cached password in place. With no password source it returns
// an empty PasswordInfo.
func (c *Connector) Refresh(ctx context.Context) (PasswordInfo, error) {
	if c.err != nil {
		return PasswordInfo{}, c.err
	}
	if c.closed.Load() {
		return PasswordInfo{}, ErrClosed
	}
	if c.cache == nil {
		return PasswordInfo{Source: "the DSN's password", User: c.base.User}, nil
	}
	e, err := c.cache.fetch(ctx, nil)
	if err != nil {
		return PasswordInfo{}, err
	}
	c.cache.replace(e)
	user := c.base.User
	if user == "" {
		user = e.cred.user
	}
	return PasswordInfo{
		Source:     c.source.describe(),
		User:       user,
		VersionID:  e.cred.version,
		Stages:     slices.Clone(e.cred.stages),
		Keys:       slices.Clone(e.cred.keys),
		ReuseUntil: e.cred.expires,
		ValidUntil: e.cred.validUntil,
	}, nil
}
