package rdstest

import (
	"crypto/tls"
	"net"
	"strings"

	"github.com/go-mysql-org/go-mysql/mysql"
)

// maxAllowedPacket is what the endpoint reports for @@max_allowed_packet,
// RDS's default of 64 MiB.
const maxAllowedPacket = 64 << 20

// UseDB accepts any database name: the endpoint has no tables.
func (s *session) UseDB(string) error { return nil }

// HandleQuery answers the few queries a client or a health check sends.
func (s *session) HandleQuery(query string) (*mysql.Result, error) {
	return s.answer(query, false)
}

func (s *session) HandleFieldList(string, string) ([]*mysql.Field, error) {
	return nil, mysql.NewError(mysql.ER_NOT_SUPPORTED_YET, "rdstest: field lists are not supported")
}

// HandleStmtPrepare prepares any query that HandleQuery answers; the
// statement's arguments are ignored when it runs.
func (s *session) HandleStmtPrepare(query string) (int, int, any, error) {
	r, err := s.answer(query, true)
	if err != nil {
		return 0, 0, nil, err
	}
	columns := 0
	if r != nil && r.Resultset != nil {
		columns = len(r.Fields)
	}
	return strings.Count(query, "?"), columns, query, nil
}

func (s *session) HandleStmtExecute(_ any, query string, _ []any) (*mysql.Result, error) {
	return s.answer(query, true)
}

func (s *session) HandleStmtClose(any) error { return nil }

func (s *session) HandleOtherCommand(cmd byte, _ []byte) error {
	return mysql.NewError(mysql.ER_UNKNOWN_COM_ERROR, "rdstest: command not supported")
}

// answer returns the result of one of the queries the endpoint knows, or
// nil for a statement that only needs an OK.
func (s *session) answer(query string, binary bool) (*mysql.Result, error) {
	q := normalize(query)
	host, _, _ := net.SplitHostPort(s.raw.RemoteAddr().String())

	switch q {
	case "select 1":
		return rows(binary, "1", int64(1))
	case "select current_user()", "select current_user":
		return rows(binary, "CURRENT_USER()", s.user+"@%")
	case "select user()", "select session_user()":
		return rows(binary, "USER()", s.user+"@"+host)
	case "select version()":
		return rows(binary, "VERSION()", s.e.version)
	case "select @@version":
		return rows(binary, "@@version", s.e.version)
	case "select @@max_allowed_packet":
		return rows(binary, "@@max_allowed_packet", int64(maxAllowedPacket))
	case "begin", "start transaction", "commit", "rollback", "do 1":
		return nil, nil
	}
	if strings.HasPrefix(q, "set ") {
		return nil, nil
	}
	if name, ok := statusVariable(q); ok {
		return s.status(name, binary)
	}
	return nil, mysql.NewError(mysql.ER_NOT_SUPPORTED_YET, "rdstest: query not supported")
}

// normalize lower-cases a query, drops /* */ comments and a trailing
// semicolon, and folds runs of white space into one space.
func normalize(query string) string {
	var b strings.Builder
	for {
		before, after, found := strings.Cut(query, "/*")
		b.WriteString(before)
		if !found {
			break
		}
		_, query, found = strings.Cut(after, "*/")
		if !found {
			break
		}
		b.WriteByte(' ')
	}
	q := strings.Join(strings.Fields(strings.ToLower(b.String())), " ")
	return strings.TrimSpace(strings.TrimSuffix(q, ";"))
}

// statusVariable returns the variable name of SHOW [SESSION] STATUS LIKE.
func statusVariable(q string) (string, bool) {
	q = strings.Replace(q, "show session status", "show status", 1)
	rest, ok := strings.CutPrefix(q, "show status like ")
	if !ok || len(rest) < 2 || (rest[0] != '\'' && rest[0] != '"') || rest[len(rest)-1] != rest[0] {
		return "", false
	}
	return rest[1 : len(rest)-1], true
}

// status answers the TLS status variables with the negotiated values, or
// with empty values on a connection without TLS. Go names cipher suites as
// IANA does, where MySQL shows OpenSSL's names for TLS 1.2 suites.
func (s *session) status(name string, binary bool) (*mysql.Result, error) {
	names := []string{"Variable_name", "Value"}
	var version, cipher string
	if s.tlsState.HandshakeComplete {
		version = tlsVersionName(s.tlsState.Version)
		cipher = tls.CipherSuiteName(s.tlsState.CipherSuite)
	}
	// go-mysql sends an empty string as NULL, and a non-nil empty []byte as
	// the empty string MySQL shows.
	switch name {
	case "ssl_version":
		return rowsOf(binary, names, []any{"Ssl_version", []byte(version)})
	case "ssl_cipher":
		return rowsOf(binary, names, []any{"Ssl_cipher", []byte(cipher)})
	}
	return rowsOf(binary, names)
}

func tlsVersionName(v uint16) string {
	switch v {
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return ""
}

func rows(binary bool, name string, value any) (*mysql.Result, error) {
	return rowsOf(binary, []string{name}, []any{value})
}

func rowsOf(binary bool, names []string, values ...[]any) (*mysql.Result, error) {
	// Without rows the binary builder leaves the columns undefined; their
	// definitions are the same in both protocols.
	rs, err := mysql.BuildSimpleResultset(names, values, binary && len(values) > 0)
	if err != nil {
		return nil, err
	}
	return mysql.NewResult(rs), nil
}
