package rdstest

import (
	"errors"
	"fmt"
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
	listener net.Listener
	done     sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	conns    []net.Conn
	accepted int
}

// NewSilentListener starts a SilentListener on 127.0.0.1 at a free port.
// The caller must Close it.
func NewSilentListener() (*SilentListener, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("rdstest: listening on loopback: %w", err)
	}
	s := &SilentListener{listener: l}
	s.done.Add(1)
	go s.acceptLoop()
	return s, nil
}

// Addr returns the loopback address the listener accepts on.
func (s *SilentListener) Addr() string { return s.listener.Addr().String() }

// Accepted returns how many connections the listener has accepted.
func (s *SilentListener) Accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// Close stops accepting, closes every connection held and waits for the
// listener's goroutine to end.
func (s *SilentListener) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	err := s.listener.Close()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
	s.mu.Unlock()

	s.done.Wait()
	return err
}

func (s *SilentListener) acceptLoop() {
	defer s.done.Done()
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
			conn.Close()
		} else {
			s.conns = append(s.conns, conn)
			s.accepted++
		}
		s.mu.Unlock()
	}
}
