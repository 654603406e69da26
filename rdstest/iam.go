package rdstest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/server"
)

// DefaultEndpoint is the RDS host and port an IAMEndpoint poses as when
// IAMOptions.Endpoint is empty.
const DefaultEndpoint = "db1.abc123.us-east-1.rds.amazonaws.com:3306"

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

// LoginFault is a failure the IAM endpoint injects into coming logins, in
// place of the normal handshake.
type LoginFault struct {
	// Number is the MySQL error number to send, for instance 1040 (too many
	// connections). By default it is sent instead of the greeting, before
	// the client has sent anything, as MySQL does when it is full.
	Number uint16
	// Message is the error message. Empty means MySQL's own text for Number
	// when it has no arguments, or a generic text otherwise.
	Message string
	// AfterLogin sends Number only once the client's token has passed every
	// check, in place of the OK packet, as when IAM has not yet caught up
	// with a policy change.
	AfterLogin bool
	// Drop closes the connection once the client has sent its login over
	// TLS, without an answer and without checking the token.
	Drop bool
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
func (s IAMStats) DeniedTotal() int {
	n := 0
	for _, v := range s.Denied {
		n += v
	}
	return n
}

// IAMEndpoint is a MySQL server on loopback that checks passwords as RDS
// checks IAM auth tokens. It requires TLS, asks for mysql_clear_password,
// answers a few queries once a login is accepted, and counts everything so
// a test can assert what happened and why. All its methods are safe for
// concurrent use.
type IAMEndpoint struct {
	hostPort   string
	region     string
	version    string
	greetAuth  string
	ca         *CA
	serverTLS  *tls.Config
	listener   net.Listener
	goroutines sync.WaitGroup
	ctx        context.Context // ends at Close, for the signer's calls
	cancel     context.CancelFunc

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	users  map[string]bool
	creds  map[string]aws.Credentials
	clock  func() time.Time
	offset time.Duration
	faults []LoginFault
	stats  IAMStats
}

// NewIAMEndpoint starts an IAM-checking MySQL endpoint on 127.0.0.1 at a
// free port. The caller must Close it.
func NewIAMEndpoint(opts IAMOptions) (*IAMEndpoint, error) {
	e := &IAMEndpoint{
		hostPort:  opts.Endpoint,
		region:    opts.Region,
		version:   opts.ServerVersion,
		greetAuth: mysql.AUTH_NATIVE_PASSWORD,
		ca:        opts.CA,
		conns:     make(map[net.Conn]struct{}),
		users:     make(map[string]bool),
		creds:     make(map[string]aws.Credentials),
		clock:     opts.Now,
		stats:     IAMStats{Denied: make(map[Reason]int)},
	}
	if e.hostPort == "" {
		e.hostPort = DefaultEndpoint
	}
	if e.region == "" {
		e.region = "us-east-1"
	}
	if e.version == "" {
		e.version = "8.0.39"
	}
	if e.clock == nil {
		e.clock = time.Now
	}
	if opts.OfferClearPassword {
		e.greetAuth = mysql.AUTH_CLEAR_PASSWORD
	}
	e.AddUser(opts.Users...)
	e.SetCredentials(opts.Credentials...)

	host, _, err := net.SplitHostPort(e.hostPort)
	if err != nil {
		return nil, fmt.Errorf("rdstest: endpoint %q is not host:port: %w", e.hostPort, err)
	}
	if e.ca == nil {
		if e.ca, err = NewCA("rdstest CA"); err != nil {
			return nil, err
		}
	}
	cert, err := e.ca.ServerCert(opts.KeyType, host)
	if err != nil {
		return nil, err
	}
	e.serverTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}

	// Loopback only: the endpoint is for tests and must not be reachable.
	e.listener, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("rdstest: listening on loopback: %w", err)
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.goroutines.Add(1)
	go e.acceptLoop()
	return e, nil
}

// Addr returns the loopback address the endpoint listens on.
func (e *IAMEndpoint) Addr() string { return e.listener.Addr().String() }

// Endpoint returns the RDS host:port that tokens must be signed for.
func (e *IAMEndpoint) Endpoint() string { return e.hostPort }

// Hostname returns the host part of Endpoint, the server certificate's name.
func (e *IAMEndpoint) Hostname() string {
	host, _, _ := net.SplitHostPort(e.hostPort)
	return host
}

// Region returns the region that tokens must be signed for.
func (e *IAMEndpoint) Region() string { return e.region }

// CA returns the CA that issued the server certificate.
func (e *IAMEndpoint) CA() *CA { return e.ca }

// ClientTLSConfig returns a client TLS configuration that trusts only the
// endpoint's CA and verifies the RDS host name.
func (e *IAMEndpoint) ClientTLSConfig() *tls.Config {
	return &tls.Config{RootCAs: e.ca.Pool(), ServerName: e.Hostname(), MinVersion: tls.VersionTLS12}
}

// DialContext connects to the endpoint's loopback address when addr is its
// RDS host:port, and fails for any other address. It fits
// mysql.Config.DialFunc, so a client can keep the RDS name in its
// configuration and still reach the endpoint.
func (e *IAMEndpoint) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if !sameHostPort(addr, e.hostPort) {
		return nil, fmt.Errorf("rdstest: no test endpoint at %s (only %s)", addr, e.hostPort)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", e.Addr())
}

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

// FailLogins makes the next n connections fail with f instead of logging
// in. Faults queue after any already pending. A fault with neither Number
// nor Drop sends error 1105 (unknown error).
func (e *IAMEndpoint) FailLogins(n int, f LoginFault) {
	if f.Number == 0 && !f.Drop {
		f.Number = mysql.ER_UNKNOWN_ERROR
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for range n {
		e.faults = append(e.faults, f)
	}
}

// Stats returns a copy of the endpoint's counters.
func (e *IAMEndpoint) Stats() IAMStats {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.stats
	s.Denied = maps.Clone(e.stats.Denied)
	s.Tokens = slices.Clone(e.stats.Tokens)
	return s
}

// ResetStats sets every counter back to zero.
func (e *IAMEndpoint) ResetStats() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stats = IAMStats{Denied: make(map[Reason]int)}
}

// Close stops the listener, closes every connection and waits until every
// goroutine of the endpoint has ended. It is safe to call more than once.
func (e *IAMEndpoint) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.cancel()
	err := e.listener.Close()
	for c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()

	e.goroutines.Wait()
	return err
}

func (e *IAMEndpoint) acceptLoop() {
	defer e.goroutines.Done()
	for {
		conn, err := e.listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}

		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			conn.Close()
			return
		}
		e.conns[conn] = struct{}{}
		e.goroutines.Add(1)
		e.mu.Unlock()
		go e.serveConn(conn)
	}
}

func (e *IAMEndpoint) serveConn(conn net.Conn) {
	defer e.goroutines.Done()
	defer func() {
		e.mu.Lock()
		delete(e.conns, conn)
		e.mu.Unlock()
		conn.Close()
	}()

	s := &session{e: e, raw: conn}
	e.mu.Lock()
	if len(e.faults) > 0 {
		s.fault, s.hasFault = e.faults[0], true
		e.faults = e.faults[1:]
	}
	e.mu.Unlock()

	if s.hasFault && !s.fault.Drop && !s.fault.AfterLogin {
		e.count(func(st *IAMStats) { st.Faults++ })
		_ = writeRawError(conn, s.fault.Number, faultMessage(s.fault))
		return
	}

	// A Server per connection lets the connection's own session be its
	// authentication provider, so that it knows its fault and TLS state.
	srv := server.NewServerWithAuth(e.version, mysql.DEFAULT_COLLATION_ID, e.greetAuth, nil,
		e.serverTLS, s)
	c, err := srv.NewCustomizedConn(conn, s, s)
	if err != nil {
		if !s.verdict {
			e.count(func(st *IAMStats) { st.Aborted++ })
		}
		return
	}
	for !c.Closed() {
		if err := c.HandleCommand(); err != nil {
			return
		}
	}
}

func (e *IAMEndpoint) count(f func(*IAMStats)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	f(&e.stats)
}

// session is one client connection: its authentication handler and
// provider, and its query handler.
type session struct {
	e        *IAMEndpoint
	raw      net.Conn
	fault    LoginFault
	hasFault bool
	verdict  bool
	user     string
	tlsState tls.ConnectionState
}

var errDropped = errors.New("rdstest: connection dropped by an injected fault")

// GetCredential makes every user an IAM user for go-mysql; Authenticate
// decides who is known.
func (s *session) GetCredential(string) (server.Credential, bool, error) {
	return server.Credential{
		Passwords:      []string{"checked by Authenticate"},
		AuthPluginName: mysql.AUTH_CLEAR_PASSWORD,
	}, true, nil
}

func (s *session) OnAuthSuccess(*server.Conn) error { return nil }

func (s *session) OnAuthFailure(*server.Conn, error) {}

func (s *session) Validate(plugin string) bool {
	return plugin == mysql.AUTH_CLEAR_PASSWORD || plugin == mysql.AUTH_NATIVE_PASSWORD
}

// Authenticate checks the clear-text password the client sent as an RDS
// IAM auth token.
func (s *session) Authenticate(c *server.Conn, _ string, data []byte) error {
	s.verdict = true
	s.user = c.GetUser()
	password := strings.TrimSuffix(string(data), "\x00")
	host, _, _ := net.SplitHostPort(c.RemoteAddr().String())

	if s.hasFault && s.fault.Drop {
		s.e.count(func(st *IAMStats) { st.Faults++ })
		s.raw.Close()
		return errDropped
	}

	// go-mysql has switched the client to the credential's plugin, so
	// plugin is always mysql_clear_password here.
	tlsConn, ok := c.Conn.Conn.(*tls.Conn)
	if !ok {
		s.e.count(func(st *IAMStats) {
			st.Denied[ReasonNoTLS]++
			if password != "" {
				st.ClearText++
			}
		})
		return accessDenied(s.user, host, password != "")
	}
	s.tlsState = tlsConn.ConnectionState()
	if password == "" {
		s.e.count(func(st *IAMStats) { st.Denied[ReasonNoPassword]++ })
		return accessDenied(s.user, host, false)
	}

	s.e.mu.Lock()
	known := s.e.users[s.user]
	policy := tokenPolicy{
		hostPort: s.e.hostPort,
		region:   s.e.region,
		user:     s.user,
		now:      s.e.now(),
		creds:    s.e.credsSnapshot(),
	}
	s.e.mu.Unlock()

	facts := checkToken(s.e.ctx, password, policy)
	if !known {
		facts.Reason = ReasonUnknownUser
	}
	faulted := facts.Reason == "" && s.hasFault && s.fault.AfterLogin
	s.e.count(func(st *IAMStats) {
		st.Tokens = append(st.Tokens, facts)
		switch {
		case facts.Reason != "":
			st.Denied[facts.Reason]++
		case faulted:
			st.Faults++
		default:
			st.Accepted++
		}
	})
	if facts.Reason != "" {
		return accessDenied(s.user, host, true)
	}
	if faulted {
		return mysql.NewError(s.fault.Number, faultMessage(s.fault))
	}
	return nil
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

func accessDenied(user, host string, usingPassword bool) error {
	using := "NO"
	if usingPassword {
		using = "YES"
	}
	return mysql.NewError(mysql.ER_ACCESS_DENIED_ERROR, fmt.Sprintf(
		"Access denied for user '%s'@'%s' (using password: %s)", user, host, using))
}

func faultMessage(f LoginFault) string {
	if f.Message != "" {
		return f.Message
	}
	if msg, ok := mysql.MySQLErrName[f.Number]; ok && !strings.Contains(msg, "%") {
		return msg
	}
	return fmt.Sprintf("rdstest: injected error %d", f.Number)
}

// writeRawError sends a MySQL error packet as the first packet of a
// connection, as a server does when it refuses a client before greeting it:
// without an SQL state, since no protocol version has been agreed yet.
func writeRawError(conn net.Conn, number uint16, message string) error {
	payload := append([]byte{0xff, byte(number), byte(number >> 8)}, message...)
	n := len(payload)
	packet := append([]byte{byte(n), byte(n >> 8), byte(n >> 16), 0}, payload...)
	_, err := conn.Write(packet)
	return err
}
