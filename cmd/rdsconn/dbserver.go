package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/server"

	"github.com/rdsconn/rdsconn/rdstest"
)

// passwordServer is a MySQL server on loopback that checks user names and
// passwords (mysql_native_password over TLS), posing under an RDS endpoint
// name. The demo needs it for Secrets Manager: rdstest's endpoint checks IAM
// tokens only. It answers SELECT 1, VERSION(), CURRENT_USER() and the TLS
// status variables.
type passwordServer struct {
	endpoint string // the RDS host:port it poses as
	listener net.Listener
	srv      *server.Server
	wg       sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	conns     map[net.Conn]struct{}
	passwords map[string]string
	accepted  int
	denied    int
}

// newPasswordServer starts a password-checking server on 127.0.0.1 with a
// certificate from ca for endpoint's host. The caller must Close it.
func newPasswordServer(ca *rdstest.CA, endpoint string) (*passwordServer, error) {
	host, _, err := net.SplitHostPort(endpoint)
	if err != nil {
		return nil, fmt.Errorf("endpoint %q is not host:port: %w", endpoint, err)
	}
	cert, err := ca.ServerCert(rdstest.ECDSAP256, host)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening on loopback: %w", err)
	}
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	s := &passwordServer{
		endpoint: endpoint,
		listener: l,
		srv: server.NewServer("8.0.39", gomysql.DEFAULT_COLLATION_ID,
			gomysql.AUTH_NATIVE_PASSWORD, nil, tlsCfg),
		conns:     map[net.Conn]struct{}{},
		passwords: map[string]string{},
	}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// SetPassword sets the password user logs in with, as ALTER USER does:
// from now on the old one is refused.
func (s *passwordServer) SetPassword(user, password string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.passwords[user] = password
}

// Stats returns how many logins were accepted and denied.
func (s *passwordServer) Stats() (accepted, denied int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted, s.denied
}

// DialContext connects to the server when addr is its RDS host:port. It
// fits mysql.Config.DialFunc.
func (s *passwordServer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if !strings.EqualFold(addr, s.endpoint) {
		return nil, fmt.Errorf("no demo server at %s (only %s)", addr, s.endpoint)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", s.listener.Addr().String())
}

// Close stops the server, closes every connection and waits for them.
func (s *passwordServer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	err := s.listener.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *passwordServer) acceptLoop() {
	defer s.wg.Done()
	for {
		conn, err := s.listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			conn.Close()
			return
		}
		s.conns[conn] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serve(conn)
	}
}

func (s *passwordServer) serve(conn net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
		conn.Close()
	}()
	sess := &pwSession{s: s}
	c, err := s.srv.NewCustomizedConn(conn, sess, sess)
	if err != nil {
		return
	}
	for !c.Closed() {
		if c.HandleCommand() != nil {
			return
		}
	}
}

// pwSession is one connection: its credentials lookup and its queries.
type pwSession struct {
	s        *passwordServer
	user     string
	tlsState tls.ConnectionState
}

// GetCredential returns the user's current password. An unknown user gets
// a password nobody knows, so that the client sees 1045 as from MySQL.
func (p *pwSession) GetCredential(user string) (server.Credential, bool, error) {
	p.s.mu.Lock()
	pw, ok := p.s.passwords[user]
	p.s.mu.Unlock()
	if !ok {
		pw = randomSecret()
	}
	return server.Credential{Passwords: []string{pw},
		AuthPluginName: gomysql.AUTH_NATIVE_PASSWORD}, true, nil
}

func (p *pwSession) OnAuthSuccess(c *server.Conn) error {
	p.user = c.GetUser()
	if t, ok := c.Conn.Conn.(*tls.Conn); ok {
		p.tlsState = t.ConnectionState()
	}
	p.s.mu.Lock()
	p.s.accepted++
	p.s.mu.Unlock()
	return nil
}

func (p *pwSession) OnAuthFailure(*server.Conn, error) {
	p.s.mu.Lock()
	p.s.denied++
	p.s.mu.Unlock()
}

// UseDB accepts any database: the server has no tables.
func (p *pwSession) UseDB(string) error { return nil }

// HandleQuery answers the few queries check and demo send.
func (p *pwSession) HandleQuery(query string) (*gomysql.Result, error) {
	q := strings.TrimSuffix(strings.ToLower(strings.Join(strings.Fields(query), " ")), ";")
	one := func(name string, v any) (*gomysql.Result, error) {
		rs, err := gomysql.BuildSimpleTextResultset([]string{name}, [][]any{{v}})
		if err != nil {
			return nil, err
		}
		return gomysql.NewResult(rs), nil
	}
	status := func(name, v string) (*gomysql.Result, error) {
		rs, err := gomysql.BuildSimpleTextResultset([]string{"Variable_name", "Value"},
			[][]any{{name, v}})
		if err != nil {
			return nil, err
		}
		return gomysql.NewResult(rs), nil
	}
	switch q {
	case "select 1":
		return one("1", int64(1))
	case "select version()":
		return one("VERSION()", "8.0.39")
	case "select current_user()":
		return one("CURRENT_USER()", p.user+"@%")
	case "show status like 'ssl_version'":
		return status("Ssl_version", tlsVersionName(p.tlsState.Version))
	case "show status like 'ssl_cipher'":
		return status("Ssl_cipher", tls.CipherSuiteName(p.tlsState.CipherSuite))
	}
	if strings.HasPrefix(q, "set ") {
		return nil, nil
	}
	return nil, errNotSupported
}

// HandleFieldList refuses COM_FIELD_LIST: there are no tables.
func (p *pwSession) HandleFieldList(string, string) ([]*gomysql.Field, error) {
	return nil, errNotSupported
}

// HandleStmtPrepare refuses prepared statements, which check and demo do
// not use.
func (p *pwSession) HandleStmtPrepare(string) (int, int, any, error) {
	return 0, 0, nil, errNotSupported
}

// HandleStmtExecute is never called: no statement can be prepared.
func (p *pwSession) HandleStmtExecute(any, string, []any) (*gomysql.Result, error) {
	return nil, errNotSupported
}

// HandleStmtClose has nothing to close.
func (p *pwSession) HandleStmtClose(any) error { return nil }

// HandleOtherCommand refuses every other command.
func (p *pwSession) HandleOtherCommand(byte, []byte) error { return errNotSupported }

var errNotSupported = gomysql.NewError(gomysql.ER_NOT_SUPPORTED_YET,
	"demo server: not supported")

func tlsVersionName(v uint16) string {
	switch v {
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return ""
}
