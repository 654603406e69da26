package rdstest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// RefusingAddr returns a loopback address where nothing listens, so that a
// dial to it is refused at once. It finds a free port and closes it again:
// another program could take the port in between, which on a test machine
// is unlikely.
func RefusingAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("rdstest: finding a free loopback port: %w", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		return "", fmt.Errorf("rdstest: closing a loopback port: %w", err)
	}
	return addr, nil
}

// SilentListener accepts TCP connections on loopback and never writes to
// them, as a server that hangs or a firewall that drops answers would, so
// that a test can check a client's timeouts. All its methods are safe for
// concurrent use.
type SilentListener struct {
	server *loopbackServer

	mu       sync.Mutex
	accepted int
}

// NewSilentListener starts a SilentListener on 127.0.0.1 at a free port.
// The caller must Close it.
func NewSilentListener() (*SilentListener, error) {
	s := &SilentListener{}
	var err error
	s.server, err = listenLoopback(s.hold)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Addr returns the loopback address the listener accepts on.
func (s *SilentListener) Addr() string { return s.server.addr() }

// Accepted returns how many connections the listener has accepted.
func (s *SilentListener) Accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// Close stops accepting, closes every connection held and waits for the
// listener's goroutines to end.
func (s *SilentListener) Close() error { return s.server.close() }

// hold counts a connection and keeps it open, reading what the client sends
// and answering nothing, until the client or Close ends it.
func (s *SilentListener) hold(conn net.Conn) {
	s.mu.Lock()
	s.accepted++
	s.mu.Unlock()
	_, _ = io.Copy(io.Discard, conn)
}

// loopbackServer accepts TCP connections on 127.0.0.1 and serves each in a
// goroutine of its own. Its close stops accepting, closes every connection
// still open and waits for every goroutine, so that a test leaks none.
type loopbackServer struct {
	listener   net.Listener
	serve      func(net.Conn) // the connection is closed when it returns
	goroutines sync.WaitGroup

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
}

// listenLoopback starts a loopbackServer at a free port. Loopback only:
// what rdstest starts is for tests and must not be reachable from outside.
func listenLoopback(serve func(net.Conn)) (*loopbackServer, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("rdstest: listening on loopback: %w", err)
	}
	s := &loopbackServer{listener: l, serve: serve, conns: make(map[net.Conn]struct{})}
	s.goroutines.Add(1)
	go s.acceptLoop()
	return s, nil
}

func (s *loopbackServer) addr() string { return s.listener.Addr().String() }

// close is safe to call more than once.
func (s *loopbackServer) close() error {
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

	s.goroutines.Wait()
	return err
}

func (s *loopbackServer) acceptLoop() {
	defer s.goroutines.Done()
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
		s.goroutines.Add(1)
		s.mu.Unlock()
		go s.serveConn(conn)
	}
}

func (s *loopbackServer) serveConn(conn net.Conn) {
	defer s.goroutines.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
		conn.Close()
	}()
	s.serve(conn)
}
