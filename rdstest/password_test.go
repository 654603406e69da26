package rdstest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/go-sql-driver/mysql"
)

func newPasswordEndpoint(t *testing.T, opts PasswordOptions) *PasswordEndpoint {
	t.Helper()
	if opts.Users == nil {
		opts.Users = map[string]string{"app": "app-password-1", "guest": ""}
	}
	e, err := NewPasswordEndpoint(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// wantMySQLError fails unless err is MySQL error number whose message
// holds want.
func wantMySQLError(t *testing.T, err error, number uint16, want string) {
	t.Helper()
	var myErr *mysql.MySQLError
	if !errors.As(err, &myErr) || myErr.Number != number {
		t.Fatalf("err = %v, want MySQL error %d", err, number)
	}
	if !strings.Contains(myErr.Message, want) {
		t.Errorf("message %q does not say %q", myErr.Message, want)
	}
}

func TestPasswordEndpointChecksPasswords(t *testing.T) {
	tests := []struct {
		name       string
		user       string
		password   string
		noTLS      bool
		requireTLS bool
		want       Reason // empty: accepted
		wantNumber uint16 // for a refusal; 0 means 1045
		wantText   string
	}{
		{name: "right password over TLS", user: "app", password: "app-password-1"},
		{name: "right password without TLS", user: "app", password: "app-password-1",
			noTLS: true},
		{name: "user whose password is empty", user: "guest"},
		{name: "wrong password", user: "app", password: "app-password-2",
			want: ReasonWrongPassword, wantText: "'app'@'127.0.0.1' (using password: YES)"},
		{name: "empty password", user: "app", want: ReasonNoPassword,
			wantText: "'app'@'127.0.0.1' (using password: NO)"},
		{name: "unknown user", user: "nobody", password: "app-password-1",
			want: ReasonUnknownUser, wantText: "(using password: YES)"},
		{name: "unknown user without password", user: "nobody", want: ReasonUnknownUser,
			wantText: "(using password: NO)"},
		{name: "TLS required and used", user: "app", password: "app-password-1",
			requireTLS: true},
		{name: "TLS required but not used", user: "app", password: "app-password-1",
			requireTLS: true, noTLS: true, want: ReasonNoTLS, wantNumber: 3159,
			wantText: "require_secure_transport=ON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newPasswordEndpoint(t, PasswordOptions{RequireTLS: tt.requireTLS})
			db, err := connect(t, e, tt.user, tt.password, !tt.noTLS)
			st := e.Stats()
			if tt.password != "" && strings.Contains(fmt.Sprintf("%v %+v", err, st), tt.password) {
				t.Error("the error or the stats carry the password")
			}

			if tt.want == "" {
				if err != nil {
					t.Fatalf("login refused: %v (stats %+v)", err, st)
				}
				if st.Accepted != 1 || st.DeniedTotal() != 0 {
					t.Errorf("stats = %+v, want one accepted login", st)
				}
				var user, name, version string
				if err := db.QueryRow("SELECT CURRENT_USER()").Scan(&user); err != nil {
					t.Fatal(err)
				}
				if user != tt.user+"@%" {
					t.Errorf("CURRENT_USER() = %q, want %q", user, tt.user+"@%")
				}
				err := db.QueryRow("SHOW STATUS LIKE 'Ssl_version'").Scan(&name, &version)
				if err != nil {
					t.Fatal(err)
				}
				if (version != "") == tt.noTLS {
					t.Errorf("Ssl_version = %q with TLS %v", version, !tt.noTLS)
				}
				return
			}

			number := tt.wantNumber
			if number == 0 {
				number = 1045
			}
			wantMySQLError(t, err, number, tt.wantText)
			if st.Accepted != 0 || st.Denied[tt.want] != 1 || st.DeniedTotal() != 1 {
				t.Errorf("stats = %+v, want one denial for %s", st, tt.want)
			}
		})
	}
}

// The endpoint asks for mysql_native_password, so a client that will not
// use it cannot log in.
func TestPasswordEndpointAsksForNativePassword(t *testing.T) {
	e := newPasswordEndpoint(t, PasswordOptions{KeyType: RSA2048})
	cfg := clientConfig(e, "app", "app-password-1", true)
	cfg.AllowNativePasswords = false
	_, err := newConnector(t, cfg).Connect(context.Background())
	if !errors.Is(err, mysql.ErrNativePassword) {
		t.Fatalf("err = %v, want ErrNativePassword", err)
	}
	waitFor(t, func() bool { return e.Stats().Aborted == 1 })
}

func TestPasswordEndpointRotation(t *testing.T) {
	e := newPasswordEndpoint(t, PasswordOptions{})
	login := func(user, password string) error {
		_, err := connect(t, e, user, password, true)
		return err
	}

	open, err := connect(t, e, "app", "app-password-1", true)
	if err != nil {
		t.Fatal(err)
	}
	e.SetPassword("app", "app-password-2")
	if err := login("app", "app-password-1"); err == nil {
		t.Error("the old password was accepted after SetPassword")
	}
	if err := login("app", "app-password-2"); err != nil {
		t.Errorf("the new password was refused: %v", err)
	}
	if err := open.Ping(); err != nil {
		t.Errorf("a connection logged in before SetPassword was closed: %v", err)
	}

	e.AddUser("app2", "app2-password")
	if err := login("app2", "app2-password"); err != nil {
		t.Errorf("an added user was refused: %v", err)
	}
	e.RemoveUser("app")
	if err := login("app", "app-password-2"); err == nil {
		t.Error("a removed user logged in")
	}

	st := e.Stats()
	if st.Accepted != 3 || st.Denied[ReasonWrongPassword] != 1 ||
		st.Denied[ReasonUnknownUser] != 1 {
		t.Errorf("stats = %+v, want 3 accepted, 1 wrong password, 1 unknown user", st)
	}
	e.ResetStats()
	if st := e.Stats(); st.Accepted != 0 || st.DeniedTotal() != 0 {
		t.Errorf("stats after ResetStats = %+v", st)
	}
}

// Logins race with password changes: each is either accepted or refused
// with 1045, and each is counted once.
func TestPasswordEndpointConcurrentRotation(t *testing.T) {
	e := newPasswordEndpoint(t, PasswordOptions{})
	const workers, logins = 4, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*logins)
	for range workers {
		wg.Go(func() {
			for range logins {
				_, err := connect(t, e, "app", "app-password-1", true)
				var myErr *mysql.MySQLError
				if err != nil && (!errors.As(err, &myErr) || myErr.Number != 1045) {
					errs <- err
				}
			}
		})
	}
	for i := range 20 {
		e.SetPassword("app", fmt.Sprint("app-password-", i%2+1))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("login failed other than with 1045: %v", err)
	}
	if st := e.Stats(); st.Accepted+st.DeniedTotal() != workers*logins {
		t.Errorf("stats = %+v, want %d logins counted", st, workers*logins)
	}
}

func TestPasswordEndpointFaults(t *testing.T) {
	e := newPasswordEndpoint(t, PasswordOptions{})
	e.FailLogins(1, LoginFault{Number: 1040})
	e.FailLogins(1, LoginFault{Number: 1045, Message: "not yet", AfterLogin: true})
	e.FailLogins(1, LoginFault{Drop: true})

	_, err := connect(t, e, "app", "app-password-1", true)
	wantMySQLError(t, err, 1040, "Too many connections")
	_, err = connect(t, e, "app", "app-password-1", true)
	wantMySQLError(t, err, 1045, "not yet")
	var myErr *mysql.MySQLError
	if _, err := connect(t, e, "app", "app-password-1", true); err == nil ||
		errors.As(err, &myErr) {
		t.Errorf("err = %v, want a dropped connection", err)
	}
	if _, err := connect(t, e, "app", "app-password-1", true); err != nil {
		t.Fatalf("login after the faults: %v", err)
	}
	if st := e.Stats(); st.Faults != 3 || st.Accepted != 1 || st.DeniedTotal() != 0 {
		t.Errorf("stats = %+v, want 3 faults then 1 accepted", st)
	}
}

func TestPasswordEndpointOptions(t *testing.T) {
	ca, err := NewCA("shared CA")
	if err != nil {
		t.Fatal(err)
	}
	e := newPasswordEndpoint(t, PasswordOptions{
		Endpoint:      "db9.xyz789.eu-west-1.rds.amazonaws.com:3307",
		CA:            ca,
		ServerVersion: "8.4.3",
	})
	if e.CA() != ca || e.Hostname() != "db9.xyz789.eu-west-1.rds.amazonaws.com" {
		t.Errorf("CA or Hostname not from the options: %q", e.Hostname())
	}
	db, err := connect(t, e, "app", "app-password-1", true)
	if err != nil {
		t.Fatal(err)
	}
	var version string
	if err := db.QueryRow("SELECT VERSION()").Scan(&version); err != nil || version != "8.4.3" {
		t.Errorf("VERSION() = %q, %v", version, err)
	}

	if _, err := NewPasswordEndpoint(PasswordOptions{Endpoint: "no-port"}); err == nil {
		t.Error("an endpoint without a port was accepted")
	}
}
