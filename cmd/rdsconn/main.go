// Command rdsconn checks a connection to Amazon RDS or Aurora MySQL step by
// step, prints IAM authentication tokens, and runs a local demonstration of
// the rdsconn library.
//
// Usage:
//
//	rdsconn check [flags] DSN   walk the connection path and say which step fails and why
//	rdsconn token [flags] DSN   print an IAM token for the DSN's endpoint and user
//	rdsconn demo [-v]           show IAM and Secrets Manager rotation on local fakes
//
// The DSN is go-sql-driver's, such as
// "app@tcp(db1.abc123.us-east-1.rds.amazonaws.com:3306)/shop", and may carry
// rdsconn's rds- parameters. Flags mirror rdsconn's options: -iam,
// -iam-endpoint, -secret, -password-file, -region, -no-auto-tls and
// -ca-bundle. Flags may come before or after the DSN.
//
// # Exit status
//
// check exits with the number of the step that failed: 1 endpoint and
// configuration, 2 region, 3 TLS, 4 AWS credentials, 5 password (token or
// secret), 6 connection. token uses the same numbers. demo exits 1 when
// the library did not behave as promised. Every subcommand exits 64 for a
// usage error and 0 on success.
//
// No output ever holds a password, token or secret value, with -json and
// -v too, except the token that the token subcommand exists to print.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"time"
)

// exitUsage is the exit status for a command line that cannot be run.
const exitUsage = 64

// env is what the command takes from its surroundings besides its
// arguments and the process environment. Tests replace parts of it to run
// the command in-process against local fakes.
type env struct {
	// dial, when set, opens every database connection check makes, in
	// place of a TCP dial (mysql.Config.DialFunc). Tests point it at a
	// loopback server posing under an RDS name.
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// now is the local clock.
	now func() time.Time
	// newSecret makes the random passwords and keys of the demo.
	newSecret func() string
}

// defaultEnv is the environment of a real run.
func defaultEnv() env {
	return env{now: time.Now, newSecret: randomSecret}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, defaultEnv())
	stop()
	os.Exit(code)
}

// run runs the command line args and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, e env) int {
	if e.now == nil {
		e.now = time.Now
	}
	if e.newSecret == nil {
		e.newSecret = randomSecret
	}
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "check":
		return runCheck(ctx, args[1:], stdout, stderr, e)
	case "token":
		return runToken(ctx, args[1:], stdout, stderr, e)
	case "demo":
		return runDemo(ctx, args[1:], stdout, stderr, e)
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "rdsconn: unknown command %q\n\n", args[0])
	usage(stderr)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprint(w, `rdsconn checks connections to Amazon RDS and Aurora MySQL.

Usage:
  rdsconn check [flags] DSN   walk the connection path step by step; exit status = failed step
  rdsconn token [flags] DSN   print an IAM token for the DSN's endpoint and user
  rdsconn demo [-v]           IAM and Secrets Manager rotation on local fakes, no AWS needed

DSN is go-sql-driver's form, e.g. app@tcp(db1.abc123.us-east-1.rds.amazonaws.com:3306)/shop
Run "rdsconn check -h" or "rdsconn token -h" for the flags.
`)
}

// parseArgs parses flags that may come before, between or after the
// positional arguments, which it returns.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

// parseCommandLine parses a subcommand's arguments, which must hold exactly
// one DSN. It returns the exit status to stop with, or -1 to go on.
func parseCommandLine(fs *flag.FlagSet, args []string, stderr io.Writer) (dsn string, code int) {
	positional, err := parseArgs(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return "", 0
	}
	if err != nil {
		return "", exitUsage
	}
	if len(positional) != 1 {
		fmt.Fprintf(stderr, "rdsconn %s: give exactly one DSN, such as "+
			"'app@tcp(db1.abc123.us-east-1.rds.amazonaws.com:3306)/shop'\n", fs.Name())
		fs.Usage()
		return "", exitUsage
	}
	return positional[0], -1
}

// randomSecret returns 24 random bytes in URL-safe base64.
func randomSecret() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return base64.RawURLEncoding.EncodeToString(b)
}
