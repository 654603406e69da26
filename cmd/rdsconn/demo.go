package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/go-sql-driver/mysql"

	"github.com/rdsconn/rdsconn"
	"github.com/rdsconn/rdsconn/rdstest"
)

const (
	// demoPool is how many connections the IAM part opens at once.
	demoPool = 8
	// demoWorkers is how many goroutines query during the rotation.
	demoWorkers = 8
	// demoSecretID names the demo's secret.
	demoSecretID = "demo/shop/app"
	// demoSecretEndpoint is the RDS name rdstest's password endpoint poses
	// as.
	demoSecretEndpoint = "db2.abc123.us-east-1.rds.amazonaws.com:3306"
)

// runDemo runs "rdsconn demo": the library against local stand-ins for RDS
// and Secrets Manager, telling what happens and checking that every
// promise is kept.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer, e env) int {
	fs := newFlagSet("demo", "demo [-v]", stderr)
	verbose := fs.Bool("v", false, "also print rdsconn's log on stderr (never a secret)")
	positional, err := parseArgs(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil || len(positional) > 0 {
		if err == nil {
			fs.Usage()
		}
		return exitUsage
	}

	var next slog.Handler
	if *verbose {
		next = slog.NewTextHandler(stderr, nil)
	}
	d := &demo{w: stdout, env: e, start: e.now(), log: newLogRecorder(next)}
	fmt.Fprintln(stdout, "rdsconn demo: the library against local stand-ins for RDS and "+
		"Secrets Manager; no AWS account, no network")
	fmt.Fprintln(stdout)
	if err := d.run(ctx); err != nil {
		fmt.Fprintf(stdout, "\ndemo stopped: %v\n", err)
		return 1
	}
	return d.summary()
}

// demo tells the story and keeps count of the promises checked.
type demo struct {
	w     io.Writer
	env   env
	start time.Time
	log   *logRecorder

	kept, broken int
	iamSummary   string
	secretSum    string
}

// say prints one line of the timeline.
func (d *demo) say(part, format string, args ...any) {
	elapsed := d.env.now().Sub(d.start).Seconds()
	fmt.Fprintf(d.w, "%7.3fs  %-7s %s\n", elapsed, part, fmt.Sprintf(format, args...))
}

// expect checks a promise and prints it under the timeline line, with
// what happened instead when it was broken.
func (d *demo) expect(ok bool, promise, got string) {
	if ok {
		d.kept++
		fmt.Fprintf(d.w, "                  ok   %s\n", promise)
		return
	}
	d.broken++
	fmt.Fprintf(d.w, "                  FAIL %s; got %s\n", promise, got)
}

func (d *demo) run(ctx context.Context) error {
	ca, err := rdstest.NewCA("rdsconn demo CA")
	if err != nil {
		return err
	}
	if err := d.iam(ctx, ca); err != nil {
		return err
	}
	fmt.Fprintln(d.w)
	return d.rotation(ctx, ca)
}

// demoCredentials is an AWS credentials provider whose session the demo
// replaces, as a role's provider does after its sessions are revoked.
type demoCredentials struct {
	v atomic.Pointer[aws.Credentials]
}

func (p *demoCredentials) Retrieve(context.Context) (aws.Credentials, error) {
	return *p.v.Load(), nil
}

// iam shows the first connection with a token, the token shared by a pool,
// and the recovery from revoked credentials.
func (d *demo) iam(ctx context.Context, ca *rdstest.CA) error {
	session := func(n int) aws.Credentials {
		return aws.Credentials{
			AccessKeyID:     fmt.Sprintf("ASIADEMOSESSION%05d", n),
			SecretAccessKey: d.env.newSecret(),
			SessionToken:    d.env.newSecret(),
			Source:          fmt.Sprintf("demo role, session %d", n),
			CanExpire:       true,
			Expires:         d.env.now().Add(time.Hour),
		}
	}
	first, second := session(1), session(2)
	ep, err := rdstest.NewIAMEndpoint(rdstest.IAMOptions{
		Users:       []string{"app"},
		Credentials: []aws.Credentials{first},
		CA:          ca,
	})
	if err != nil {
		return err
	}
	defer ep.Close()
	d.say("setup", "RDS stand-in %s on %s checks IAM tokens as RDS does (rdstest)",
		ep.Endpoint(), ep.Addr())

	creds := &demoCredentials{}
	creds.v.Store(&first)
	cfg := mysql.NewConfig()
	cfg.User, cfg.Net, cfg.Addr, cfg.DBName = "app", "tcp", ep.Endpoint(), "shop"
	cfg.DialFunc = ep.DialContext
	db := sql.OpenDB(rdsconn.New(cfg,
		rdsconn.WithIAM(),
		rdsconn.WithAWSConfig(aws.Config{Credentials: creds}),
		rdsconn.WithRootCAs(ca.Pool()),
		rdsconn.WithLogger(slog.New(d.log.handler())),
	))
	defer db.Close()
	// Closed connections are not kept, so each db.Conn below logs in anew.
	db.SetMaxIdleConns(0)

	// 1. The first connection builds a token.
	c1, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("first IAM connection: %w", err)
	}
	var user, tlsName, tlsVersion string
	if err := c1.QueryRowContext(ctx, "SELECT CURRENT_USER()").Scan(&user); err != nil {
		return err
	}
	_ = c1.QueryRowContext(ctx, "SHOW STATUS LIKE 'Ssl_version'").Scan(&tlsName, &tlsVersion)
	d.say("iam", "first connection: logged in as %s over %s with an IAM token", user, tlsVersion)
	st := ep.Stats()
	d.expect(st.Accepted == 1 && d.log.count(evTokenBuilt) == 1,
		"1 token built, 1 login accepted", fmt.Sprintf("%d tokens, %d logins",
			d.log.count(evTokenBuilt), st.Accepted))

	// 2. A pool of connections opened at once shares that token.
	conns, err := openConns(ctx, db, demoPool)
	if err != nil {
		return fmt.Errorf("opening %d IAM connections: %w", demoPool, err)
	}
	for _, c := range conns {
		c.Close()
	}
	c1.Close()
	st = ep.Stats()
	d.say("iam", "%d more connections at once", demoPool)
	d.expect(st.Accepted == 1+demoPool && d.log.count(evTokenBuilt) == 1 &&
		distinctTokens(st.Tokens) == 1,
		fmt.Sprintf("%d logins, all with the first token; still 1 token built", 1+demoPool),
		fmt.Sprintf("%d logins, %d tokens built, %d seen", st.Accepted,
			d.log.count(evTokenBuilt), distinctTokens(st.Tokens)))

	// 3. The credentials that signed the token are revoked.
	ep.RevokeCredentials(first.AccessKeyID)
	ep.SetCredentials(second)
	creds.v.Store(&second)
	d.say("iam", "the role's session 1 is revoked: RDS stops accepting its tokens; "+
		"the credentials provider now hands out session 2")
	c2, err := db.Conn(ctx)
	if err != nil {
		d.say("iam", "new connection failed: %v", err)
		d.expect(false, "the caller sees no error", err.Error())
		return nil
	}
	err = c2.PingContext(ctx)
	c2.Close()
	st = ep.Stats()
	refused := st.Denied[rdstest.ReasonUnknownKey]
	d.say("iam", "new connection: the cached token is refused (%s), a new token is built "+
		"with session 2, and the login succeeds", rdstest.ReasonUnknownKey)
	d.expect(err == nil && refused == 1 && d.log.count(evRetried) == 1 &&
		d.log.count(evTokenBuilt) == 2,
		"1 refusal, 1 retry, 2 tokens built, no error for the caller",
		fmt.Sprintf("%d refusals, %d retries, %d tokens, error %s", refused,
			d.log.count(evRetried), d.log.count(evTokenBuilt), errText(err)))

	d.iamSummary = fmt.Sprintf("%d logins accepted, %d refused, %d tokens built",
		st.Accepted, st.DeniedTotal(), d.log.count(evTokenBuilt))
	return nil
}

// openConns opens n connections at once and returns them all open.
func openConns(ctx context.Context, db *sql.DB, n int) ([]*sql.Conn, error) {
	conns := make([]*sql.Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { conns[i], errs[i] = db.Conn(ctx) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		return nil, err
	}
	return conns, nil
}

// distinctTokens counts the different tokens the endpoint saw, told apart
// by their signing time and key.
func distinctTokens(tokens []rdstest.TokenFacts) int {
	seen := map[string]bool{}
	for _, t := range tokens {
		seen[t.AccessKeyID+t.Date.String()] = true
	}
	return len(seen)
}

// Phases of the rotation, by which queries are counted.
const (
	phaseBefore   = iota // before the rotation
	phasePending         // AWSPENDING holds the new password
	phaseSwitched        // the database takes only the new password
	phaseAfter           // AWSCURRENT holds the new password
	phases
)

// queryLoad runs SELECT 1 in a loop on demoWorkers goroutines and counts
// the outcomes by the phase in which each query started.
type queryLoad struct {
	phase   atomic.Int32
	ok      [phases][demoWorkers]atomic.Int64
	failed  atomic.Int64
	lastErr atomic.Value
	stop    chan struct{}
	wg      sync.WaitGroup
}

// start starts the workers. Each query opens a new connection, since db
// keeps no idle ones.
func (l *queryLoad) start(ctx context.Context, db *sql.DB) {
	l.stop = make(chan struct{})
	for w := range demoWorkers {
		l.wg.Go(func() {
			for {
				select {
				case <-l.stop:
					return
				case <-ctx.Done():
					return
				default:
				}
				p := l.phase.Load()
				var one int
				if err := db.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
					l.failed.Add(1)
					l.lastErr.Store(err.Error())
				} else {
					l.ok[p][w].Add(1)
				}
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
}

// halt stops the workers and waits for them.
func (l *queryLoad) halt() {
	close(l.stop)
	l.wg.Wait()
}

// succeeded returns how many queries started in phase p succeeded.
func (l *queryLoad) succeeded(p int) int64 {
	var n int64
	for w := range demoWorkers {
		n += l.ok[p][w].Load()
	}
	return n
}

// everyWorker reports whether every worker has had a query that started in
// phase p succeed.
func (l *queryLoad) everyWorker(p int) bool {
	for w := range demoWorkers {
		if l.ok[p][w].Load() == 0 {
			return false
		}
	}
	return true
}

// waitUntil waits at least least, then until cond holds, for at most most.
func waitUntil(ctx context.Context, least, most time.Duration, cond func() bool) {
	deadline := time.Now().Add(most)
	select {
	case <-time.After(least):
	case <-ctx.Done():
		return
	}
	for !cond() && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
}

// rotation shows a single-user secret rotation, played as Secrets
// Manager's rotation function does it, while workers query, each query on
// a new connection, with no query failing.
func (d *demo) rotation(ctx context.Context, ca *rdstest.CA) error {
	sm := rdstest.NewSecretsManager("us-east-1")
	defer sm.Close()
	srv, err := rdstest.NewPasswordEndpoint(rdstest.PasswordOptions{
		Endpoint: demoSecretEndpoint,
		CA:       ca,
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	d.say("setup", "MySQL stand-in %s checks passwords (rdstest)", demoSecretEndpoint)
	d.say("setup", "Secrets Manager stand-in on %s (rdstest)", sm.URL())

	oldPassword := d.env.newSecret()
	srv.SetPassword("app", oldPassword)
	sm.PutSecret(demoSecretID, secretJSON("app", oldPassword))

	cfg := mysql.NewConfig()
	cfg.Net, cfg.Addr, cfg.DBName = "tcp", demoSecretEndpoint, "shop"
	cfg.DialFunc = srv.DialContext
	db := sql.OpenDB(rdsconn.New(cfg,
		rdsconn.WithSecret(demoSecretID),
		rdsconn.WithAWSConfig(sm.AWSConfig()),
		rdsconn.WithRootCAs(ca.Pool()),
		rdsconn.WithLogger(slog.New(d.log.handler())),
	))
	defer db.Close()
	db.SetMaxOpenConns(demoWorkers)
	db.SetMaxIdleConns(0)

	if err := db.PingContext(ctx); err != nil {
		return fmt.Errorf("first connection with the secret: %w", err)
	}
	d.say("secret", "first connection: user and password from secret %q (AWSCURRENT)",
		demoSecretID)
	d.expect(sm.Stats().GetSecretValue == 1, "1 GetSecretValue call",
		fmt.Sprint(sm.Stats().GetSecretValue))

	var load queryLoad
	load.start(ctx, db)
	d.say("secret", "%d workers run SELECT 1 in a loop, each query on a new connection",
		demoWorkers)
	waitUntil(ctx, 200*time.Millisecond, 10*time.Second,
		func() bool { return load.everyWorker(phaseBefore) })

	newPassword := d.env.newSecret()
	pending, err := sm.PutPending(demoSecretID, secretJSON("app", newPassword))
	if err != nil {
		load.halt()
		return err
	}
	load.phase.Store(phasePending)
	d.say("secret", "rotation, createSecret: a new password is stored as AWSPENDING "+
		"(version %s)", pending)
	waitUntil(ctx, 100*time.Millisecond, 0, func() bool { return true })

	srv.SetPassword("app", newPassword)
	load.phase.Store(phaseSwitched)
	d.say("secret", "rotation, setSecret: the database now accepts only the new password")
	// The rotation function tests the new password before it finishes;
	// here every worker gets in with it first.
	waitUntil(ctx, 300*time.Millisecond, 10*time.Second,
		func() bool { return load.everyWorker(phaseSwitched) })

	if err := sm.Promote(demoSecretID, pending); err != nil {
		load.halt()
		return err
	}
	load.phase.Store(phaseAfter)
	d.say("secret", "rotation, finishSecret: AWSCURRENT moves to version %s", pending)
	waitUntil(ctx, 200*time.Millisecond, 10*time.Second,
		func() bool { return load.everyWorker(phaseAfter) })
	load.halt()
	if err := ctx.Err(); err != nil {
		return err
	}

	denied := srv.Stats().DeniedTotal()
	sms := sm.Stats()
	before, after := load.succeeded(phaseBefore), load.succeeded(phaseAfter)
	during := load.succeeded(phasePending) + load.succeeded(phaseSwitched)
	failed := load.failed.Load()
	d.say("secret", "workers stopped: %d queries (%d before, %d during, %d after the "+
		"rotation), %d failed", before+during+after+failed, before, during, after, failed)
	last, _ := load.lastErr.Load().(string)
	d.expect(failed == 0, "no query failed",
		fmt.Sprintf("%d failed, the last with: %s", failed, last))
	d.expect(before > 0 && load.succeeded(phaseSwitched) > 0 && after > 0,
		"queries succeeded before, during and after the rotation",
		fmt.Sprintf("%d, %d, %d", before, load.succeeded(phaseSwitched), after))
	pendingWorked := d.log.count(evPending)
	d.expect(denied > 0 && pendingWorked > 0,
		fmt.Sprintf("the old password was refused %s, yet every connection got in: "+
			"rdsconn moved to the AWSPENDING version %s", times(denied), times(pendingWorked)),
		fmt.Sprintf("AWSPENDING used %s", times(pendingWorked)))
	// The first fetch, and at most two calls for the rotation (AWSCURRENT
	// and AWSPENDING) plus one more AWSCURRENT when it finishes mid-Connect.
	d.expect(sms.GetSecretValue <= 4,
		fmt.Sprintf("GetSecretValue calls stay few: %d (AWSCURRENT %d, AWSPENDING %d)",
			sms.GetSecretValue, sms.ByStage[rdstest.StageCurrent],
			sms.ByStage[rdstest.StagePending]),
		"more than 4")

	d.secretSum = fmt.Sprintf("%d queries by %d workers, %d failed; %d logins refused with "+
		"the old password; %d GetSecretValue calls", before+during+after+failed, demoWorkers,
		failed, denied, sms.GetSecretValue)
	return nil
}

// summary prints the counts and the verdict and returns the exit status.
func (d *demo) summary() int {
	fmt.Fprintln(d.w)
	fmt.Fprintln(d.w, "summary")
	fmt.Fprintf(d.w, "  IAM:      %s\n", d.iamSummary)
	fmt.Fprintf(d.w, "  secret:   %s\n", d.secretSum)
	fmt.Fprintf(d.w, "  promises: %d kept, %d broken (%.1fs)\n", d.kept, d.broken,
		d.env.now().Sub(d.start).Seconds())
	if d.broken > 0 {
		return 1
	}
	return 0
}

// secretJSON is a secret value in the form RDS writes.
func secretJSON(user, password string) string {
	b, _ := json.Marshal(map[string]any{
		"engine": "mysql", "host": strings.Split(demoSecretEndpoint, ":")[0], "port": 3306,
		"username": user, "password": password,
	})
	return string(b)
}

func errText(err error) string {
	if err == nil {
		return "none"
	}
	return err.Error()
}

// times says how often something happened, in words for one and two.
func times(n int) string {
	switch n {
	case 1:
		return "once"
	case 2:
		return "twice"
	}
	return fmt.Sprintf("%d times", n)
}
