package rdsconn

import (
	"errors"
	"fmt"
	"strings"

	"github.com/aws/smithy-go"
	"github.com/go-sql-driver/mysql"
)

// ErrConfig is the error every configuration problem matches with
// errors.Is. A configuration error is found before anything is dialled and
// is never retried: the program or its DSN has to change.
var ErrConfig = errors.New("rdsconn: invalid configuration")

// ErrSecretFormat is matched by the error for a Secrets Manager secret whose
// value rdsconn cannot use: not a JSON object, or without a non-empty
// "password". The secret has to be fixed; fetching it again does not help.
var ErrSecretFormat = errors.New("rdsconn: unusable secret value")

// ErrUnknownCA is matched by the error for a server certificate that does not
// verify against the embedded Amazon RDS roots. The error also unwraps to
// the x509 error that Go's TLS stack reported.
var ErrUnknownCA = errors.New(
	"rdsconn: server certificate not signed by an embedded Amazon RDS root")

// ErrClosed is returned by Connect after Close.
var ErrClosed = errors.New("rdsconn: connector closed")

// configError builds an error that matches ErrConfig. The format must not
// carry a password, token or secret value.
func configError(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...)
}

// FetchError reports that a password source failed: the IAM token could
// not be built, or the secret, file or function gave no usable password.
// It unwraps to the cause.
type FetchError struct {
	// Source names where the password was to come from, such as
	// `Secrets Manager secret "prod/app"`.
	Source string
	// Err is the cause.
	Err error
}

// Error describes the failure. It never contains a password, token or secret.
func (e *FetchError) Error() string {
	return "rdsconn: getting the password from the " + e.Source + ": " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *FetchError) Unwrap() error { return e.Err }

// Temporary reports whether trying again later can help: true for
// throttling, server and network faults; false for a configuration mistake,
// an unusable secret value, and AWS answers that only a change of secret,
// key or permission fixes (not found, decryption failure, access denied,
// invalid or expired credentials).
func (e *FetchError) Temporary() bool {
	if errors.Is(e.Err, ErrConfig) || errors.Is(e.Err, ErrSecretFormat) {
		return false
	}
	var api smithy.APIError
	if errors.As(e.Err, &api) {
		switch api.ErrorCode() {
		case "ResourceNotFoundException", "DecryptionFailure", "AccessDeniedException",
			"InvalidParameterException", "InvalidRequestException", "UnrecognizedClientException",
			"InvalidSignatureException", "ExpiredTokenException",
			// The same refusals as STS spells them.
			"AccessDenied", "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken",
			"RegionDisabledException":
			return false
		}
	}
	return true
}

// AccessDeniedError is returned when the server refused a password that was
// fetched afresh after a first refusal. It unwraps to the server's
// *mysql.MySQLError, and its message lists the usual causes for the source.
type AccessDeniedError struct {
	// Source names where the refused password came from.
	Source string
	// Hints are the usual causes of this refusal for the source in use.
	Hints []string
	// Err is the server's error, a *mysql.MySQLError.
	Err error
}

// Error describes the refusal and its likely causes.
func (e *AccessDeniedError) Error() string {
	var b strings.Builder
	b.WriteString("rdsconn: access denied with a freshly fetched password from the ")
	b.WriteString(e.Source)
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	if len(e.Hints) > 0 {
		b.WriteString("; likely causes: ")
		b.WriteString(strings.Join(e.Hints, "; "))
	}
	return b.String()
}

// Unwrap returns the server's error.
func (e *AccessDeniedError) Unwrap() error { return e.Err }

// isAccessDenied reports whether err, however wrapped, is the server refusing
// the user name and password: MySQL error 1045 (access denied) or 1698
// (access denied for a user that must use another plugin).
func isAccessDenied(err error) bool {
	if err == nil {
		return false // the common case, without errors.As's allocation
	}
	var me *mysql.MySQLError
	return errors.As(err, &me) && (me.Number == 1045 || me.Number == 1698)
}
