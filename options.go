package rdsconn

import (
	"context"
	"crypto/x509"
	"log/slog"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// Option configures a Connector. Options never fail: a problem with one is
// reported by every Connect, before anything is dialled.
type Option func(*settings)

// settings is what the options collect.
type settings struct {
	iam         bool
	iamEndpoint string
	// iamEndpointGiven and regionGiven tell an empty value from none.
	iamEndpointGiven bool
	regionGiven      bool
	secretID         string
	passwordFile     string
	passwordFunc     func(ctx context.Context) (string, error)
	region           string
	awsConfig        *aws.Config
	rootCAs          *x509.CertPool
	noAutoTLS        bool
	logger           *slog.Logger

	// sources counts the password sources asked for, to refuse two.
	sources map[string]bool
	errs    []error

	// Seams for tests.
	now        func() time.Time
	buildToken tokenBuilder
}

func (s *settings) addSource(name string) { s.sources[name] = true }

// WithIAM makes the password an RDS IAM authentication token, built for the
// endpoint, region and user with the credentials of the AWS config. It turns
// on the clear-text authentication plugin and requires verified TLS, which
// auto TLS supplies for RDS endpoint names.
func WithIAM() Option {
	return func(s *settings) {
		s.iam = true
		s.addSource("WithIAM")
	}
}

// WithIAMEndpoint is WithIAM for connections that reach the database through
// a tunnel, proxy or alias: the token, the region and the TLS server name
// come from hostport, the RDS endpoint as "host:port", while the connection
// is dialled to the DSN address.
func WithIAMEndpoint(hostport string) Option {
	return func(s *settings) {
		s.iam = true
		s.iamEndpoint = hostport
		s.iamEndpointGiven = true
		s.addSource("WithIAM")
	}
}

// WithSecret makes the password (and, when the DSN names no user, the user)
// come from an AWS Secrets Manager secret, given by name or ARN. The secret's
// value is JSON with at least a non-empty "password".
func WithSecret(secretID string) Option {
	return func(s *settings) {
		s.secretID = secretID
		s.addSource("WithSecret")
	}
}

// WithPasswordFile makes the password the contents of the file at path, with
// surrounding white space removed, such as a mounted Kubernetes secret. The
// file is read again when its cached value expires or the server refuses it.
func WithPasswordFile(path string) Option {
	return func(s *settings) {
		s.passwordFile = path
		s.addSource("WithPasswordFile")
	}
}

// WithPasswordFunc makes the password whatever fn returns. Its result is
// cached and shared like the other sources, and fn is called again when the
// cached value expires or the server refuses it.
func WithPasswordFunc(fn func(ctx context.Context) (string, error)) Option {
	return func(s *settings) {
		s.passwordFunc = fn
		if fn == nil {
			s.errs = append(s.errs, configError("WithPasswordFunc was given a nil function"))
		}
		s.addSource("WithPasswordFunc")
	}
}

// WithRegion sets the AWS region for signing IAM tokens and for Secrets
// Manager, overriding every other way of finding it.
func WithRegion(region string) Option {
	return func(s *settings) { s.region, s.regionGiven = region, true }
}

// WithAWSConfig sets the AWS configuration (credentials, region, HTTP
// client, endpoints) to use instead of loading the default one.
func WithAWSConfig(cfg aws.Config) Option {
	return func(s *settings) { s.awsConfig = &cfg }
}

// WithRootCAs sets the certificate authorities that auto TLS verifies the
// server against, instead of the embedded Amazon RDS roots.
func WithRootCAs(pool *x509.CertPool) Option {
	return func(s *settings) {
		s.rootCAs = pool
		if pool == nil {
			s.errs = append(s.errs, configError("WithRootCAs was given a nil pool"))
		}
	}
}

// WithoutAutoTLS stops rdsconn from turning on TLS for RDS endpoint names.
// IAM still requires TLS, configured through the DSN or mysql.Config.
func WithoutAutoTLS() Option {
	return func(s *settings) { s.noAutoTLS = true }
}

// WithLogger makes rdsconn log what a person running a service wants to see:
// tokens built, secrets fetched, access denied and retried, stale values kept,
// the region found. It never logs a token, password or secret value. Without
// it rdsconn is silent.
func WithLogger(l *slog.Logger) Option {
	return func(s *settings) { s.logger = l }
}
