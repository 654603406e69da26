package rdstest

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net"
	"strings"
	"sync"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/server"
)

// DefaultEndpoint is the RDS host and port an endpoint poses as when its
// options leave Endpoint empty.
const DefaultEndpoint = "db1.abc123.us-east-1.rds.amazonaws.com:3306"

// defaultServerVersion is what VERSION() answers unless told otherwise.
const defaultServerVersion = "8.0.39"

// LoginFault is a failure an endpoint injects into coming logins, in place
// of the normal handshake.
type LoginFault struct {
	// Number is the MySQL error number to send, for instance 1040 (too many
	// connections). By default it is sent instead of the greeting, before
	// the client has sent anything, as MySQL does when it is full.
	Number uint16
	// Message is the error message. Empty means MySQL's own text for Number
	// when it has no arguments, or a generic text otherwise.
	Message string
	// AfterLogin sends Number only once the client's token or password has
	// passed every check, in place of the OK packet, as when IAM has not yet
	// caught up with a policy change.
	AfterLogin bool
	// Drop closes the connection once the client has sent its login,
	// without an answer and without checking its token or password.
	Drop bool
}

// mysqlEndpoint is what IAMEndpoint and PasswordEndpoint share: a MySQL
// server on loopback that poses as an RDS host:port with a certificate for
// its name, injects login faults, counts logins, and answers a few queries
// once a login is accepted. Whether a login is accepted is up to its login.
type mysqlEndpoint struct {
	hostPort  string
	version   string
	greetAuth string // the auth plugin the greeting offers
	ca        *CA
	serverTLS *tls.Config
	server    *loopbackServer
	login     login

	// mu guards the fields below, and those of the endpoint embedding this
	// one, so that one lock covers all of an endpoint's state.
	mu     sync.Mutex
	faults []LoginFault
	counts loginCounts
}

// login is the part of an endpoint that knows its users and their
// passwords.
type login interface {
	// credential returns what go-mysql needs for user: the auth plugin to
	// switch the client to, and a password it can compare against.
	credential(user string) server.Credential
	// check returns why the attempt is refused, or "" to accept it. A
	// refusal is sent as MySQL error 1045 unless check returns an error to
	// send instead.
	check(a attempt) (Reason, error)
}

// attempt is one client's login as a check sees it.
type attempt struct {
	conn    *server.Conn
	plugin  string
	data    []byte // as the client sent it: a clear-text password ends in NUL
	user    string
	overTLS bool
}

// loginCounts are the counters that both endpoints keep. PasswordStats
// has the same fields, so that one converts to the other.
type loginCounts struct {
	Accepted int
	Denied   map[Reason]int
	Faults   int
	Aborted  int
}

func newLoginCounts() loginCounts { return loginCounts{Denied: make(map[Reason]int)} }

// clone returns a copy that shares nothing with c.
func (c loginCounts) clone() loginCounts {
	c.Denied = maps.Clone(c.Denied)
	return c
}

// endpointConfig is what the options of both endpoints have in common.
type endpointConfig struct {
	hostPort  string
	version   string
	greetAuth string
	ca        *CA
	keyType   KeyType
}

// start makes the server certificate and starts accepting connections,
// each of which l will check.
func (e *mysqlEndpoint) start(cfg endpointConfig, l login) error {
	e.hostPort, e.version, e.greetAuth = cfg.hostPort, cfg.version, cfg.greetAuth
	e.ca, e.login, e.counts = cfg.ca, l, newLoginCounts()
	if e.hostPort == "" {
		e.hostPort = DefaultEndpoint
	}
	if e.version == "" {
		e.version = defaultServerVersion
	}

	host, _, err := net.SplitHostPort(e.hostPort)
	if err != nil {
		return fmt.Errorf("rdstest: endpoint %q is not host:port: %w", e.hostPort, err)
	}
	if e.ca == nil {
		if e.ca, err = NewCA("rdstest CA"); err != nil {
			return err
		}
	}
	cert, err := e.ca.ServerCert(cfg.keyType, host)
	if err != nil {
		return err
	}
	e.serverTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}

	e.server, err = listenLoopback(e.serveConn)
	return err
}

// Addr returns the loopback address the endpoint listens on.
func (e *mysqlEndpoint) Addr() string { return e.server.addr() }

// Endpoint returns the RDS host:port the endpoint poses as.
func (e *mysqlEndpoint) Endpoint() string { return e.hostPort }

// Hostname returns the host part of Endpoint, the server certificate's name.
func (e *mysqlEndpoint) Hostname() string {
	host, _, _ := net.SplitHostPort(e.hostPort)
	return host
}

// CA returns the CA that issued the server certificate.
func (e *mysqlEndpoint) CA() *CA { return e.ca }

// ClientTLSConfig returns a client TLS configuration that trusts only the
// endpoint's CA and verifies the RDS host name.
func (e *mysqlEndpoint) ClientTLSConfig() *tls.Config {
	return &tls.Config{RootCAs: e.ca.Pool(), ServerName: e.Hostname(), MinVersion: tls.VersionTLS12}
}

// DialContext connects to the endpoint's loopback address when addr is its
// RDS host:port, and fails for any other address. It fits
// mysql.Config.DialFunc, so a client can keep the RDS name in its
// configuration and still reach the endpoint.
func (e *mysqlEndpoint) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if !sameHostPort(addr, e.hostPort) {
		return nil, fmt.Errorf("rdstest: no test endpoint at %s (only %s)", addr, e.hostPort)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", e.Addr())
}

// FailLogins makes the next n connections fail with f instead of logging
// in. Faults queue after any already pending. A fault with neither Number
// nor Drop sends error 1105 (unknown error).
func (e *mysqlEndpoint) FailLogins(n int, f LoginFault) {
	if f.Number == 0 && !f.Drop {
		f.Number = mysql.ER_UNKNOWN_ERROR
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for range n {
		e.faults = append(e.faults, f)
	}
}

// Close stops the listener, closes every connection and waits until every
// goroutine of the endpoint has ended. It is safe to call more than once.
func (e *mysqlEndpoint) Close() error { return e.server.close() }

func (e *mysqlEndpoint) count(f func(*loginCounts)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	f(&e.counts)
}

func (e *mysqlEndpoint) serveConn(conn net.Conn) {
	s := &session{e: e, raw: conn}
	e.mu.Lock()
	if len(e.faults) > 0 {
		s.fault, s.hasFault = e.faults[0], true
		e.faults = e.faults[1:]
	}
	e.mu.Unlock()

	if s.hasFault && !s.fault.Drop && !s.fault.AfterLogin {
		e.count(func(n *loginCounts) { n.Faults++ })
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
			e.count(func(n *loginCounts) { n.Aborted++ })
		}
		return
	}
	for !c.Closed() {
		if err := c.HandleCommand(); err != nil {
			return
		}
	}
}

// session is one client connection: its authentication handler and
// provider, and its query handler.
type session struct {
	e        *mysqlEndpoint
	raw      net.Conn
	fault    LoginFault
	hasFault bool
	verdict  bool
	user     string
	tlsState tls.ConnectionState
}

var errDropped = errors.New("rdstest: connection dropped by an injected fault")

// GetCredential asks the endpoint's login; Authenticate decides who is
// known.
func (s *session) GetCredential(user string) (server.Credential, bool, error) {
	return s.e.login.credential(user), true, nil
}

func (s *session) OnAuthSuccess(*server.Conn) error { return nil }

func (s *session) OnAuthFailure(*server.Conn, error) {}

func (s *session) Validate(plugin string) bool {
	return plugin == mysql.AUTH_CLEAR_PASSWORD || plugin == mysql.AUTH_NATIVE_PASSWORD
}

// Authenticate injects a Drop or AfterLogin fault, has the endpoint's login
// check the password, and counts the outcome. go-mysql has switched the
// client to the credential's plugin, so plugin is always that one here.
func (s *session) Authenticate(c *server.Conn, plugin string, data []byte) error {
	s.verdict = true
	s.user = c.GetUser()
	host, _, _ := net.SplitHostPort(c.RemoteAddr().String())

	if s.hasFault && s.fault.Drop {
		s.e.count(func(n *loginCounts) { n.Faults++ })
		s.raw.Close()
		return errDropped
	}

	tlsConn, overTLS := c.Conn.Conn.(*tls.Conn)
	if overTLS {
		s.tlsState = tlsConn.ConnectionState()
	}
	reason, refusal := s.e.login.check(attempt{conn: c, plugin: plugin, data: data,
		user: s.user, overTLS: overTLS})
	faulted := reason == "" && s.hasFault && s.fault.AfterLogin
	s.e.count(func(n *loginCounts) {
		switch {
		case reason != "":
			n.Denied[reason]++
		case faulted:
			n.Faults++
		default:
			n.Accepted++
		}
	})
	switch {
	case refusal != nil:
		return refusal
	case reason != "":
		return accessDenied(s.user, host, len(bytes.TrimSuffix(data, []byte{0})) > 0)
	case faulted:
		return mysql.NewError(s.fault.Number, faultMessage(s.fault))
	}
	return nil
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
