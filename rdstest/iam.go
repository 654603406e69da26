package rdstest

import (
	"context"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/server"
)

// IAMOptions configures an IAMEndpoint. The zero value gives an endpoint
// posing as DefaultEndpoint in us-east-1 that trusts no user and no key.
type IAMOptions struct {
	// Endpoint is the host:port that tokens must be signed for. Its host is
	// also the name in the server certificate. Empty means DefaultEndpoint.
	Endpoint string
	// Region is the region tokens must be signed for. Empty means us-east-1.
	Region string
	// Users are the MySQL users that may log in with IAM.
	Users []string
	// Credentials are the AWS credentials whose tokens the endpoint trusts,
	// keyed by their access key id. A session token, when set, must be in
	// the token too.
	Credentials []aws.Credentials
	// CA issues the server certificate. Nil means a new CA.
	CA *CA
	// KeyType is the server certificate's key type. The zero value is
	// ECDSA P-256; RSA2048 is what RDS presents but is slower to make.
	KeyType KeyType
	// Now is the endpoint's clock, against which token dates are checked.
	// Nil means time.Now. Advance moves it on from either.
	Now func() time.Time
	// ServerVersion is what VERSION() answers. Empty means 8.0.39.
	ServerVersion string
	// OfferClearPassword makes the greeting ask for mysql_clear_password
	// at once. By default the greeting offers mysql_native_password and the
	// endpoint then switches the client to mysql_clear_password, as RDS does
	// for users identified with AWSAuthenticationPlugin.
	OfferClearPassword bool
}

// IAMStats counts what an IAMEndpoint saw. It holds no secret: tokens are
// reduced to their TokenFacts.
type IAMStats struct {
	// Accepted counts logins whose token passed every check.
	Accepted int
	// Denied counts refused logins by reason.
	Denied map[Reason]int
	// ClearText counts non-empty passwords the endpoint received on a
	// connection without TLS. Each was refused with ReasonNoTLS.
	ClearText int
	// Faults counts logins that an injected LoginFault failed.
	Faults int
	// Aborted counts handshakes that ended without a verdict, for instance
	// because the client hung up or refused to send a clear-text password.
	Aborted int
	// Tokens holds the facts of every token checked, oldest first.
	Tokens []TokenFacts
}

// DeniedTotal returns the number of refused logins, for every reason.
func (s IAMStats) DeniedTotal() int { return sumCounts(s.Denied) }

// IAMEndpoint is a MySQL server on loopback that checks passwords as RDS
// checks IAM auth tokens. It requires TLS, asks for mysql_clear_password,
// answers a few queries once a login is accepted, and counts everything so
// a test can assert what happened and why. All its methods are safe for
// concurrent use.
type IAMEndpoint struct {
	mysqlEndpoint
	region string
	ctx    context.Context // ends at Close, for the signer's calls
	cancel context.CancelFunc

	// Guarded by mysqlEndpoint.mu.
	users     map[string]bool
	creds     map[string]aws.Credentials
	clock     func() time.Time
	offset    time.Duration
	clearText int
	tokens    []TokenFacts
}

// NewIAMEndpoint starts an IAM-checking MySQL endpoint on 127.0.0.1 at a
// free port. The caller must Close it.
func NewIAMEndpoint(opts IAMOptions) (*IAMEndpoint, error) {
	e := &IAMEndpoint{
		region: opts.Region,
		users:  make(map[string]bool),
		creds:  make(map[string]aws.Credentials),
		clock:  opts.Now,
	}
	if e.region == "" {
		e.region = "us-east-1"
	}
	if e.clock == nil {
		e.clock = time.Now
	}
	e.AddUser(opts.Users...)
	e.SetCredentials(opts.Credentials...)

	cfg := endpointConfig{
		hostPort:  opts.Endpoint,
		version:   opts.ServerVersion,
		greetAuth: mysql.AUTH_NATIVE_PASSWORD,
		ca:        opts.CA,
		keyType:   opts.KeyType,
	}
	if opts.OfferClearPassword {
		cfg.greetAuth = mysql.AUTH_CLEAR_PASSWORD
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	if err := e.start(cfg, e); err != nil {
		e.cancel()
		return nil, err
	}
	return e, nil
}

// Region returns the region that tokens must be signed for.
func (e *IAMEndpoint) Region() string { return e.region }

// AddUser lets the given MySQL users log in with IAM.
func (e *IAMEndpoint) AddUser(users ...string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, u := range users {
		e.users[u] = true
	}
}

// RemoveUser stops the given MySQL user from logging in.
func (e *IAMEndpoint) RemoveUser(user string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.users, user)
}

// SetCredentials trusts tokens signed with the given credentials, replacing
// any with the same access key id, as after a rotation of the session token.
func (e *IAMEndpoint) SetCredentials(creds ...aws.Credentials) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, c := range creds {
		e.creds[c.AccessKeyID] = c
	}
}

// RevokeCredentials stops trusting tokens signed with the access key id.
func (e *IAMEndpoint) RevokeCredentials(accessKeyID string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.creds, accessKeyID)
}

// SetClock replaces the endpoint's clock and clears any Advance.
func (e *IAMEndpoint) SetClock(now func() time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.clock, e.offset = now, 0
}

// Advance moves the endpoint's clock forward by d, so that a test can make
// it "16 minutes later" for the tokens it checks.
func (e *IAMEndpoint) Advance(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.offset += d
}

// Now returns the time on the endpoint's clock.
func (e *IAMEndpoint) Now() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now()
}

func (e *IAMEndpoint) now() time.Time { return e.clock().Add(e.offset) }

// Stats returns a copy of the endpoint's counters.
func (e *IAMEndpoint) Stats() IAMStats {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.counts.clone()
	return IAMStats{Accepted: c.Accepted, Denied: c.Denied, ClearText: e.clearText,
		Faults: c.Faults, Aborted: c.Aborted, Tokens: slices.Clone(e.tokens)}
}

// ResetStats sets every counter back to zero.
func (e *IAMEndpoint) ResetStats() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.counts, e.clearText, e.tokens = newLoginCounts(), 0, nil
}

// Close stops the listener, closes every connection and waits until every
// goroutine of the endpoint has ended. It is safe to call more than once.
func (e *IAMEndpoint) Close() error {
	e.cancel()
	return e.mysqlEndpoint.Close()
}

// credential makes every user an IAM user for go-mysql, so that it switches
// the client to mysql_clear_password; check decides who is known.
func (e *IAMEndpoint) credential(string) server.Credential {
	return server.Credential{
		Passwords:      []string{"checked by check"},
		AuthPluginName: mysql.AUTH_CLEAR_PASSWORD,
	}
}

// check checks the clear-text password the client sent as an RDS IAM auth
// token, and keeps the token's facts.
func (e *IAMEndpoint) check(a attempt) (Reason, error) {
	password := strings.TrimSuffix(string(a.data), "\x00")
	if !a.overTLS {
		if password != "" {
			e.mu.Lock()
			e.clearText++
			e.mu.Unlock()
		}
		return ReasonNoTLS, nil
	}
	if password == "" {
		return ReasonNoPassword, nil
	}

	e.mu.Lock()
	known := e.users[a.user]
	policy := tokenPolicy{
		hostPort: e.hostPort,
		region:   e.region,
		user:     a.user,
		now:      e.now(),
		creds:    e.credsSnapshot(),
	}
	e.mu.Unlock()

	facts := checkToken(e.ctx, password, policy)
	if !known {
		facts.Reason = ReasonUnknownUser
	}
	e.mu.Lock()
	e.tokens = append(e.tokens, facts)
	e.mu.Unlock()
	return facts.Reason, nil
}

// credsSnapshot returns a lookup over a copy of the trusted credentials.
// The caller holds e.mu.
func (e *IAMEndpoint) credsSnapshot() func(string) (aws.Credentials, bool) {
	creds := maps.Clone(e.creds)
	return func(akid string) (aws.Credentials, bool) {
		c, ok := creds[akid]
		return c, ok
	}
}
