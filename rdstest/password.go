package rdstest

import (
	"crypto/rand"
	"errors"
	"maps"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/server"
)

// erSecureTransportRequired is MySQL's error 3159, sent to a client without
// TLS while require_secure_transport is ON. go-mysql has no name for it.
const erSecureTransportRequired = 3159

// PasswordOptions configures a PasswordEndpoint. The zero value gives an
// endpoint posing as DefaultEndpoint that knows no user.
type PasswordOptions struct {
	// Endpoint is the RDS host:port the endpoint poses as. Its host is also
	// the name in the server certificate. Empty means DefaultEndpoint.
	Endpoint string
	// Users maps the MySQL users that may log in to their passwords. The
	// endpoint keeps a copy: change it with SetPassword.
	Users map[string]string
	// CA issues the server certificate. Nil means a new CA.
	CA *CA
	// KeyType is the server certificate's key type. The zero value is
	// ECDSA P-256; RSA2048 is what RDS presents but is slower to make.
	KeyType KeyType
	// ServerVersion is what VERSION() answers. Empty means 8.0.39.
	ServerVersion string
	// RequireTLS refuses logins without TLS with MySQL error 3159, as
	// require_secure_transport=ON does. By default a client may log in
	// with or without TLS.
	RequireTLS bool
}

// PasswordStats counts what a PasswordEndpoint saw. It holds no password.
type PasswordStats struct {
	// Accepted counts logins with the user's current password.
	Accepted int
	// Denied counts refused logins by reason: ReasonWrongPassword,
	// ReasonUnknownUser, ReasonNoPassword or ReasonNoTLS.
	Denied map[Reason]int
	// Faults counts logins that an injected LoginFault failed.
	Faults int
	// Aborted counts handshakes that ended without a verdict, for instance
	// because the client hung up.
	Aborted int
}

// DeniedTotal returns the number of refused logins, for every reason.
func (s PasswordStats) DeniedTotal() int { return sumCounts(s.Denied) }

// PasswordEndpoint is a MySQL server on loopback that checks user names and
// passwords with mysql_native_password, as an RDS instance does for users
// whose password a Secrets Manager secret holds. Change a password with
// SetPassword, as a rotation does with ALTER USER, and the old one is
// refused from then on. It offers TLS with a certificate for the RDS host
// name, answers the same few queries as IAMEndpoint once a login is
// accepted, and counts logins. All its methods are safe for concurrent use.
type PasswordEndpoint struct {
	mysqlEndpoint
	requireTLS bool

	// Guarded by mysqlEndpoint.mu.
	passwords map[string]string
}

// NewPasswordEndpoint starts a password-checking MySQL endpoint on
// 127.0.0.1 at a free port. The caller must Close it.
func NewPasswordEndpoint(opts PasswordOptions) (*PasswordEndpoint, error) {
	e := &PasswordEndpoint{requireTLS: opts.RequireTLS, passwords: maps.Clone(opts.Users)}
	if e.passwords == nil {
		e.passwords = make(map[string]string)
	}

	err := e.start(endpointConfig{
		hostPort:  opts.Endpoint,
		version:   opts.ServerVersion,
		greetAuth: mysql.AUTH_NATIVE_PASSWORD,
		ca:        opts.CA,
		keyType:   opts.KeyType,
	}, e)
	if err != nil {
		return nil, err
	}
	return e, nil
}

// AddUser lets user log in with password, as CREATE USER does. For a user
// the endpoint already knows it is the same as SetPassword.
func (e *PasswordEndpoint) AddUser(user, password string) { e.SetPassword(user, password) }

// SetPassword changes the password user logs in with, as ALTER USER ...
// IDENTIFIED BY does: from now on the old one is refused, while
// connections already logged in stay open. A user the endpoint does not
// know yet is added.
func (e *PasswordEndpoint) SetPassword(user, password string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.passwords[user] = password
}

// RemoveUser stops user from logging in, as DROP USER does.
func (e *PasswordEndpoint) RemoveUser(user string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.passwords, user)
}

// Stats returns a copy of the endpoint's counters.
func (e *PasswordEndpoint) Stats() PasswordStats {
	e.mu.Lock()
	defer e.mu.Unlock()
	return PasswordStats(e.counts.clone())
}

// ResetStats sets every counter back to zero.
func (e *PasswordEndpoint) ResetStats() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.counts = newLoginCounts()
}

// credential gives go-mysql the user's current password to compare the
// client's scramble against. An unknown user gets a random stand-in, which
// check never compares: it refuses the user first.
func (e *PasswordEndpoint) credential(user string) server.Credential {
	e.mu.Lock()
	password, known := e.passwords[user]
	e.mu.Unlock()
	if !known {
		password = rand.Text()
	}
	return server.Credential{Passwords: []string{password},
		AuthPluginName: mysql.AUTH_NATIVE_PASSWORD}
}

// check compares the client's mysql_native_password scramble with the
// password that credential gave for the connection.
func (e *PasswordEndpoint) check(a attempt) (Reason, error) {
	if e.requireTLS && !a.overTLS {
		return ReasonNoTLS, mysql.NewError(erSecureTransportRequired, "Connections using "+
			"insecure transport are prohibited while --require_secure_transport=ON.")
	}
	e.mu.Lock()
	_, known := e.passwords[a.user]
	e.mu.Unlock()
	if !known {
		return ReasonUnknownUser, nil
	}

	var native server.DefaultAuthenticationProvider
	err := native.Authenticate(a.conn, a.plugin, a.data)
	switch {
	case errors.Is(err, server.ErrAccessDeniedNoPassword):
		return ReasonNoPassword, nil
	case err != nil:
		return ReasonWrongPassword, nil
	}
	return "", nil
}

func sumCounts(m map[Reason]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
