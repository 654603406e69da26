package rdsconn

import (
	"context"
	"crypto/tls"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-sql-driver/mysql"
)

// DriverName is the name under which rdsconn registers its database/sql
// driver, for programs that open databases by driver name and DSN.
const DriverName = "rdsmysql"

// defaultPort is go-sql-driver's port when an address names none.
const defaultPort = "3306"

// placeholderHost stands in for the address while a named TLS config is
// resolved; the .invalid domain never resolves.
const placeholderHost = "rdsconn-placeholder.invalid"

var (
	_ driver.Connector = (*Connector)(nil)
	_ io.Closer        = (*Connector)(nil)
)

// Connector is a database/sql driver.Connector that opens go-sql-driver
// connections with a password from the configured source: an RDS IAM
// token, a Secrets Manager secret, a file or a function. Passwords are
// cached and shared by concurrent Connects; when the server refuses one, it
// is fetched afresh and the connection is tried once more.
//
// A Connector is safe for concurrent use. Make it with New.
type Connector struct {
	err    error         // configuration error, returned by every Connect
	base   *mysql.Config // private copy with TLS and plugins decided
	direct driver.Connector
	cache  *cache // nil when the DSN's password is used as is
	source source
	log    *slog.Logger

	endpoint    string    // host:port for tokens, region and auto TLS
	aws         *awsState // AWS config and regions, loaded when first needed
	tlsHost     string    // server name auto TLS verifies; "" when auto TLS is off
	embeddedCAs bool      // auto TLS verifies against the embedded roots

	closed atomic.Bool
	cancel context.CancelFunc
}

// New returns a Connector for cfg with the given options. New never fails,
// so that it fits in sql.OpenDB(rdsconn.New(cfg, ...)): every configuration
// problem is returned by each Connect (so by db.PingContext), before
// anything is dialled. New copies cfg; the caller's config and any TLS
// config in it are never modified.
//
// The rds- parameters of a DSN parsed with mysql.ParseDSN (rds-iam,
// rds-iam-endpoint, rds-secret, rds-password-file, rds-region,
// rds-auto-tls) are applied before opts and removed from the copy.
func New(cfg *mysql.Config, opts ...Option) *Connector {
	s := &settings{sources: map[string]bool{}, now: time.Now, buildToken: buildAuthToken}
	c := &Connector{}
	closing, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	if cfg == nil {
		c.err = configError("New was given a nil *mysql.Config; use mysql.NewConfig or mysql.ParseDSN")
		return c
	}

	// Work on a copy: go-sql-driver writes into the TLS config it is given.
	base := cfg.Clone()
	dsnOpts, err := takeDSNParams(base)
	if err != nil {
		c.err = err
		return c
	}
	for _, opt := range append(dsnOpts, opts...) {
		opt(s)
	}
	c.log = s.logger
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.base = base // for Plan, also when configure fails
	if err := c.configure(base, s, closing); err != nil {
		c.err = err
	}
	return c
}

// configure checks the settings and prepares the config, the TLS decision
// and the password source.
func (c *Connector) configure(base *mysql.Config, s *settings, closing context.Context) error {
	if len(s.errs) > 0 {
		return errors.Join(s.errs...)
	}
	if len(s.sources) > 1 {
		names := make([]string, 0, len(s.sources))
		for _, n := range []string{"WithIAM", "WithSecret", "WithPasswordFile", "WithPasswordFunc"} {
			if s.sources[n] {
				names = append(names, n)
			}
		}
		return configError("more than one password source (%s); keep one",
			strings.Join(names, ", "))
	}

	if s.regionGiven && s.region == "" {
		return configError("WithRegion (rds-region) was given an empty region; give one such " +
			"as us-east-1, or leave it out to find the region by itself")
	}
	if s.region != "" && !isRegion(s.region) {
		return configError("the region %q is not an AWS region name such as us-east-1; "+
			"fix WithRegion or the rds-region DSN parameter", s.region)
	}

	if err := resolveNamedTLS(base); err != nil {
		return err
	}

	// The endpoint whose name decides the region and TLS: the IAM endpoint
	// when one is given, else the DSN address.
	endpoint, err := dsnEndpoint(base)
	if err != nil && (s.iam && s.iamEndpoint == "") {
		return err
	}
	if s.iam && s.iamEndpoint == "" && s.iamEndpointGiven {
		return configError("WithIAMEndpoint (rds-iam-endpoint) was given an empty endpoint; " +
			"give the RDS endpoint as host:port")
	}
	if s.iamEndpoint != "" {
		if endpoint, err = parseHostPort(s.iamEndpoint); err != nil {
			return err
		}
	}
	host, _, _ := net.SplitHostPort(endpoint)
	c.endpoint = endpoint

	// tls=true on an RDS name asks for verified TLS; the roots that verify
	// RDS are the embedded ones, not the system's, so auto TLS serves it.
	_, _, isRDS := parseEndpoint(host)
	isRDS = isRDS || isGlobalEndpoint(host)
	plainTrue := base.TLSConfig == "true" && base.TLS != nil && base.TLS.RootCAs == nil &&
		!base.TLS.InsecureSkipVerify
	if isRDS && !s.noAutoTLS && (base.TLS == nil && base.TLSConfig == "" || plainTrue) {
		roots := s.rootCAs
		c.embeddedCAs = roots == nil
		if roots == nil {
			roots = embeddedRoots()
		}
		base.TLS = autoTLSConfig(host, roots)
		c.tlsHost = host
	} else if s.iamEndpoint != "" && base.TLS != nil &&
		(base.TLS.ServerName == "" || base.TLS.ServerName == dsnHost(base)) {
		// Through a tunnel the certificate carries the RDS name, not the
		// address dialled.
		base.TLS.ServerName = host
	}

	c.aws = &awsState{
		given:   s.awsConfig,
		regions: &regionFinder{option: s.region, endpoint: endpoint, mu: make(ctxMutex, 1)},
		log:     c.log,
		mu:      make(ctxMutex, 1),
	}
	switch {
	case s.iam:
		if err := requireVerifiedTLS(base, s.noAutoTLS); err != nil {
			return err
		}
		if base.User == "" {
			return configError("IAM authentication needs the database user in the DSN " +
				"(user@tcp(host:port)/db) or mysql.Config.User")
		}
		base.AllowCleartextPasswords = true
		if base.TLS != nil && base.TLS.MinVersion < tls.VersionTLS12 {
			base.TLS.MinVersion = tls.VersionTLS12 // our copy: a token needs no older TLS
		}
		c.source = &iamSource{endpoint: endpoint, user: base.User, build: s.buildToken,
			aws: c.aws, log: c.log}
	case s.sources["WithSecret"]:
		arnRegion, err := parseSecretID(s.secretID)
		if err != nil {
			return err
		}
		c.source = &secretSource{id: s.secretID, arnRegion: arnRegion, aws: c.aws, log: c.log,
			mu: make(ctxMutex, 1)}
	case s.sources["WithPasswordFile"]:
		if s.passwordFile == "" {
			return configError("WithPasswordFile was given an empty path")
		}
		c.source = fileSource{path: s.passwordFile}
	case s.passwordFunc != nil:
		c.source = funcSource{fn: s.passwordFunc}
	}

	// Validate the config once, as go-sql-driver would at every Connect.
	direct, err := mysql.NewConnector(base)
	if err != nil {
		return configError("%v", err)
	}
	c.base = base
	if c.source == nil {
		c.direct = direct
		return nil
	}
	c.cache = &cache{src: c.source, build: c.connectorFor, now: s.now, log: c.log, closing: closing}
	return nil
}

// connectorFor builds the go-sql-driver connector for one credential.
func (c *Connector) connectorFor(cred credential) (*entry, error) {
	cfg := c.base.Clone()
	cfg.Passwd = cred.password
	if cred.user != "" && cfg.User == "" {
		cfg.User = cred.user
	}
	if cfg.User == "" {
		return nil, configError("no database user: the DSN names none and the %s has no "+
			`"username"`, c.source.describe())
	}
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, configError("%v", err)
	}
	return &entry{cred: cred, conn: conn}, nil
}

// Connect opens a connection with a cached password, fetching one when
// needed. When the server refuses the password, Connect drops it, gets a
// new one and tries once more. For a secret, the new one is the AWSPENDING
// version when AWSCURRENT still holds the refused one (a single-user
// rotation has changed the database first); and when a newer AWSCURRENT is
// refused too, the AWSPENDING version gets one last try.
func (c *Connector) Connect(ctx context.Context) (driver.Conn, error) {
	if c.err != nil {
		return nil, c.err
	}
	if c.base == nil {
		return nil, configError("the Connector was not made by New")
	}
	if c.closed.Load() {
		return nil, ErrClosed
	}
	if c.cache == nil {
		return c.dial(ctx, c.direct)
	}

	e, err := c.cache.get(ctx)
	if err != nil {
		return nil, err
	}
	conn, err := c.dial(ctx, e.conn)
	first := e
	for tries := 1; isAccessDenied(err) && c.mayRetry(tries, e); tries++ {
		c.log.Warn("rdsconn: access denied; fetching a new password and retrying",
			"source", c.source.describe(), "error", err)
		refused := e
		next, ferr := c.cache.renew(ctx, e)
		if ferr != nil {
			return nil, ferr
		}
		e = next
		if tries > 1 && (sameCredential(e, refused) || sameCredential(e, first)) {
			break // nothing new to try: sending it again would only count against the user
		}
		conn, err = c.dial(ctx, e.conn)
	}
	if isAccessDenied(err) {
		c.cache.drop(e)
		return nil, &AccessDeniedError{Source: c.source.describe(), Hints: c.source.hints(), Err: err}
	}
	return conn, err
}

// mayRetry says whether a refusal of e, after tries attempts, gets another
// renewal: always after the first; after the second only for a secret
// whose retry used AWSCURRENT, so that AWSPENDING, or an AWSCURRENT that a
// rotation moved meanwhile, gets one try. Connect dials that third value
// only if it differs from those refused.
func (c *Connector) mayRetry(tries int, e *entry) bool {
	if tries == 1 {
		return true
	}
	_, secret := c.source.(*secretSource)
	return tries == 2 && secret && !e.cred.pending && e.cred.version != ""
}

// sameCredential reports whether a and b hold the same user and password.
func sameCredential(a, b *entry) bool {
	return a.cred.password == b.cred.password && a.cred.user == b.cred.user
}

// dial opens one go-sql-driver connection, explaining an unknown-CA failure.
func (c *Connector) dial(ctx context.Context, conn driver.Connector) (driver.Conn, error) {
	dc, err := conn.Connect(ctx)
	if err != nil && c.embeddedCAs {
		err = explainUnknownCA(err, c.tlsHost)
	}
	return dc, err
}

// Driver returns the rdsmysql driver.
func (c *Connector) Driver() driver.Driver { return Driver{} }

// Close stops background refreshes and makes later Connects fail with
// ErrClosed. database/sql calls it when the *sql.DB is closed. Connections
// already open are not affected.
func (c *Connector) Close() error {
	c.closed.Store(true)
	if c.cancel != nil {
		c.cancel()
	}
	return nil
}

// dsnEndpoint returns the DSN's TCP address as host:port, adding
// go-sql-driver's default port when none is given.
func dsnEndpoint(cfg *mysql.Config) (string, error) {
	if cfg.Net == "unix" || cfg.Net == "unixgram" || cfg.Net == "unixpacket" {
		return "", configError("IAM authentication over %q needs the RDS endpoint: "+
			"use WithIAMEndpoint(\"host:port\") or the rds-iam-endpoint DSN parameter", cfg.Net)
	}
	addr := cfg.Addr
	if addr == "" {
		addr = "127.0.0.1:" + defaultPort
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(addr, defaultPort)
	}
	return parseHostPort(addr)
}

// parseHostPort checks an endpoint given as host:port and returns it with
// the host in canonical form.
func parseHostPort(hostport string) (string, error) {
	if strings.Contains(hostport, "://") {
		return "", configError("the endpoint %q is a URL; give it as host:port, such as "+
			"db1.abc123.us-east-1.rds.amazonaws.com:3306", hostport)
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil || host == "" {
		return "", configError("the endpoint %q is not host:port, such as "+
			"db1.abc123.us-east-1.rds.amazonaws.com:3306", hostport)
	}
	if net.ParseIP(host) == nil && !isHostName(host) {
		return "", configError("the endpoint %q does not start with a host name; give it as "+
			"host:port, such as db1.abc123.us-east-1.rds.amazonaws.com:3306", hostport)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
		return "", configError("the endpoint %q has an invalid port; give host:port with a "+
			"port from 1 to 65535 in plain digits", hostport)
	}
	return net.JoinHostPort(canonicalHost(host), port), nil
}

// dsnHost returns the host of the DSN address, as go-sql-driver puts it in
// a TLS config without a server name.
func dsnHost(cfg *mysql.Config) string {
	host, _, _ := net.SplitHostPort(cfg.Addr)
	return host
}

// resolveNamedTLS turns a TLS config named in TLSConfig ("true" or one
// registered with mysql.RegisterTLSConfig) into the config itself, as
// go-sql-driver would at Connect, so that auto TLS and the IAM checks see
// what will really be used.
func resolveNamedTLS(cfg *mysql.Config) error {
	switch cfg.TLSConfig {
	case "", "false", "skip-verify", "preferred":
		return nil
	}
	if cfg.TLS != nil {
		return nil
	}
	// Resolve against a placeholder host, so that a server name go-sql-driver
	// fills in can be told from one the registered config carries.
	named, err := mysql.ParseDSN("tcp(" + placeholderHost + ":3306)/?tls=" +
		url.QueryEscape(cfg.TLSConfig))
	if err != nil || named.TLS == nil {
		return configError("the TLS config %q is not registered; register it with "+
			"mysql.RegisterTLSConfig before opening the database", cfg.TLSConfig)
	}
	if named.TLS.ServerName == placeholderHost {
		named.TLS.ServerName = ""
	}
	cfg.TLS = named.TLS
	return nil
}

// requireVerifiedTLS refuses IAM without verified TLS: the token is a
// bearer credential and must never travel in clear text.
func requireVerifiedTLS(cfg *mysql.Config, noAutoTLS bool) error {
	switch {
	case cfg.TLSConfig == "false" || cfg.TLSConfig == "skip-verify" || cfg.TLSConfig == "preferred":
		return configError("IAM authentication needs verified TLS, but the DSN has tls=%s; "+
			"remove the tls parameter: auto TLS verifies RDS endpoints against the embedded "+
			"Amazon RDS roots", cfg.TLSConfig)
	case cfg.AllowFallbackToPlaintext:
		return configError("IAM authentication needs verified TLS, but the config allows " +
			"falling back to plain text; unset AllowFallbackToPlaintext")
	case cfg.TLS != nil && cfg.TLS.InsecureSkipVerify:
		return configError("IAM authentication needs verified TLS, but the TLS config skips " +
			"verification; unset InsecureSkipVerify")
	case cfg.TLS == nil && cfg.TLSConfig == "":
		if noAutoTLS {
			return configError("IAM authentication needs verified TLS, but auto TLS is off and " +
				"none is configured; drop WithoutAutoTLS (rds-auto-tls=false), or set " +
				"mysql.Config.TLS with RootCAs: rdsconn.RootCAs()")
		}
		return configError("IAM authentication needs verified TLS, but the host is not an RDS " +
			"endpoint name, so auto TLS is off; give the RDS endpoint with WithIAMEndpoint " +
			"(rds-iam-endpoint), or set mysql.Config.TLS with RootCAs: rdsconn.RootCAs()")
	}
	return nil
}

// String describes the connector without any password, for logs.
func (c *Connector) String() string {
	if c.base == nil {
		return "rdsconn.Connector(invalid)"
	}
	src := "DSN password"
	if c.source != nil {
		src = c.source.describe()
	}
	return fmt.Sprintf("rdsconn.Connector(%s@%s, %s)", c.base.User, c.base.Addr, src)
}
