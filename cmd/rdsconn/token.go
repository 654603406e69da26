package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/aws/aws-sdk-go-v2/feature/rds/auth"

	"github.com/rdsconn/rdsconn"
)

// runToken runs "rdsconn token": it prints an IAM token for the DSN's
// endpoint and user, as aws rds generate-db-auth-token does.
func runToken(ctx context.Context, args []string, stdout, stderr io.Writer, e env) int {
	fs := newFlagSet("token", "token [flags] DSN", stderr)
	var f connFlags
	f.register(fs, false)
	fs.Lookup("ca-bundle").Usage = "PEM `file` the mysql client verifies the server with " +
		"(for -env); default the RDS global bundle"
	fs.Lookup("v").Usage = "also print the endpoint, user and region on stderr"
	asEnv := fs.Bool("env", false,
		"print shell lines that set MYSQL_PWD and the mysql client's TLS and clear-text options")
	dsn, code := parseCommandLine(fs, args, stderr)
	if code >= 0 {
		return code
	}
	f.iam = true
	opts, err := f.options()
	if err != nil {
		fmt.Fprintf(stderr, "rdsconn token: %v\n", err)
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()

	fail := func(step int, err error) int {
		fmt.Fprintf(stderr, "rdsconn token: %v\n", err)
		return step
	}
	cfg, err := rdsconn.ParseDSN(dsn)
	if err != nil {
		return fail(stepEndpoint, err)
	}
	c := rdsconn.New(cfg, opts...)
	defer c.Close()
	plan := c.Plan()
	if plan.Err != nil {
		return fail(stepEndpoint, plan.Err)
	}
	region, from, err := c.Region(ctx)
	if err != nil {
		return fail(stepRegion, err)
	}
	if f.verbose {
		fmt.Fprintf(stderr, "rdsconn token: for user %q at %s in %s (region from %s)\n",
			plan.User, plan.Endpoint, region, from)
	}
	awsCfg, err := c.AWSConfig(ctx)
	if err == nil && awsCfg.Credentials == nil {
		err = errors.New("the AWS config has no credentials provider")
	}
	if err == nil {
		_, err = awsCfg.Credentials.Retrieve(ctx)
	}
	if err != nil {
		return fail(stepCredentials, err)
	}
	token, err := auth.BuildAuthToken(ctx, plan.Endpoint, region, plan.User, awsCfg.Credentials)
	if err != nil {
		return fail(stepPassword, fmt.Errorf("building the token: %w", err))
	}

	if !*asEnv {
		fmt.Fprintln(stdout, token)
		return 0
	}
	printEnv(stdout, plan, region, f.caBundle, cfg.DBName, token)
	return 0
}

// printEnv prints shell lines for the mysql client: the token in
// MYSQL_PWD, the address, the clear-text plugin that IAM needs, and the
// options for verified TLS.
func printEnv(w io.Writer, plan rdsconn.Plan, region, caBundle, dbName, token string) {
	host, port, _ := net.SplitHostPort(plan.Addr)
	sslMode := "VERIFY_IDENTITY"
	if plan.Addr != plan.Endpoint {
		// Through a tunnel the certificate names the RDS endpoint, not the
		// address dialled.
		sslMode = "VERIFY_CA"
	}
	if caBundle == "" {
		caBundle = "global-bundle.pem"
		fmt.Fprintln(w, "# The RDS CA bundle: "+
			"https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem")
	}
	fmt.Fprintf(w, "# IAM token for %s at %s in %s, valid for 15 minutes\n", plan.User,
		plan.Endpoint, region)
	fmt.Fprintf(w, "export MYSQL_HOST=%s\n", shellQuote(host))
	fmt.Fprintf(w, "export MYSQL_TCP_PORT=%s\n", shellQuote(port))
	fmt.Fprintf(w, "export MYSQL_PWD=%s\n", shellQuote(token))
	fmt.Fprintln(w, "export LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN=Y")
	args := []string{"--user=" + plan.User, "--ssl-mode=" + sslMode, "--ssl-ca=" + caBundle,
		"--enable-cleartext-plugin"}
	fmt.Fprintf(w, "export RDSCONN_MYSQL_ARGS=%s\n", shellQuote(strings.Join(args, " ")))
	// MariaDB's client names the TLS options differently and allows the
	// clear-text plugin by default.
	mariadb := []string{"--user=" + plan.User, "--ssl", "--ssl-ca=" + caBundle}
	if sslMode == "VERIFY_IDENTITY" {
		mariadb = append(mariadb, "--ssl-verify-server-cert")
	}
	fmt.Fprintf(w, "export RDSCONN_MARIADB_ARGS=%s\n", shellQuote(strings.Join(mariadb, " ")))
	fmt.Fprintf(w, "# Then, with MySQL's client:   mysql $RDSCONN_MYSQL_ARGS %s\n", dbName)
	fmt.Fprintf(w, "# or with MariaDB's client:     mariadb $RDSCONN_MARIADB_ARGS %s\n", dbName)
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
