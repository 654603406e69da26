package main

import (
	"context"
	"crypto/tls"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/arn"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	smtypes "github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"
	"github.com/go-sql-driver/mysql"

	"github.com/rdsconn/rdsconn"
)

const (
	// tokenLifetime is how long RDS accepts an IAM token after signing.
	tokenLifetime = 15 * time.Minute
	// skewLimit is the clock difference past which RDS refuses tokens that
	// are dated ahead of its clock; past it, skew is a likely cause.
	skewLimit = 5 * time.Minute
	// awsCallTimeout bounds each AWS call check makes itself.
	awsCallTimeout = 10 * time.Second
)

// runCheck runs "rdsconn check".
func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer, e env) int {
	fs := newFlagSet("check", "check [flags] DSN", stderr)
	var f connFlags
	f.register(fs, true)
	asJSON := fs.Bool("json", false, "print the outcome as one JSON object")
	dsn, code := parseCommandLine(fs, args, stderr)
	if code >= 0 {
		return code
	}
	opts, err := f.options()
	if err != nil {
		fmt.Fprintf(stderr, "rdsconn check: %v\n", err)
		return exitUsage
	}

	var next slog.Handler
	if f.verbose {
		next = slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug})
	}
	ck := &checker{
		flags: &f,
		env:   e,
		opts:  opts,
		out:   &reporter{w: stdout, json: *asJSON, verbose: f.verbose},
		log:   newLogRecorder(next),
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	ck.run(ctx, dsn)
	return ck.out.finish()
}

// checker walks the path a connection takes through rdsconn, one step at a
// time, and remembers what each step found for the diagnosis of later ones.
type checker struct {
	flags *connFlags
	env   env
	opts  []rdsconn.Option
	out   *reporter
	log   *logRecorder

	cfg  *mysql.Config
	in   intent
	kind string
	conn *rdsconn.Connector
	plan rdsconn.Plan

	region, regionFrom string
	account, identity  string // from STS GetCallerIdentity
	skew               time.Duration
	haveSkew           bool
	info               rdsconn.PasswordInfo
	pendingVersion     string // AWSPENDING version id when a rotation is under way
}

// run runs the steps in order and stops at the first that fails.
func (ck *checker) run(ctx context.Context, dsn string) {
	defer func() {
		if ck.conn != nil {
			ck.conn.Close()
		}
	}()
	if !ck.checkEndpoint(dsn) {
		return
	}
	steps := []func(context.Context) bool{
		ck.checkRegion, ck.checkTLS, ck.checkCredentials, ck.checkPassword, ck.checkConnection,
	}
	for _, s := range steps {
		if !s(ctx) {
			return
		}
	}
}

// fail records a failed step with its diagnosis and returns false.
func (ck *checker) fail(s *step, err error, d diagnosis) bool {
	s.Status = statusFail
	if s.Summary == "" {
		s.Summary = firstLine(err)
	}
	s.Error = err.Error()
	s.Cause, s.Why, s.Advice = d.cause, d.why, d.advice
	ck.out.add(s)
	return false
}

// skip records a step that does not apply and returns true.
func (ck *checker) skip(s *step, why string) bool {
	s.Status, s.Summary = statusSkip, why
	ck.out.add(s)
	return true
}

// done records a step that passed, with a warning if it has notes.
func (ck *checker) done(s *step) bool {
	if s.Status == "" {
		s.Status = statusOK
	}
	ck.out.add(s)
	return true
}

// checkEndpoint is step 1: the DSN, the endpoint and whether rdsconn
// accepts the configuration.
func (ck *checker) checkEndpoint(dsn string) bool {
	s := &step{Number: stepEndpoint}
	cfg, err := rdsconn.ParseDSN(dsn)
	if err != nil {
		s.Summary = "the DSN does not parse"
		return ck.fail(s, err, diagnoseDSN())
	}
	if ck.env.dial != nil {
		cfg.DialFunc = ck.env.dial
	}
	ck.cfg, ck.in = cfg, resolveIntent(cfg, ck.flags)
	ck.kind = kindOf(ck.in.endpoint)
	opts := append(ck.opts, rdsconn.WithLogger(slog.New(ck.log.handler())))
	ck.conn = rdsconn.New(cfg, opts...)
	ck.plan = ck.conn.Plan()

	s.Facts = map[string]any{
		"endpoint": ck.in.endpoint,
		"dialled":  cfg.Addr,
		"user":     cfg.User,
		"rds_name": ck.kind != "",
		"kind":     ck.kind,
		"source":   ck.describeSource(),
	}
	what := "not an RDS endpoint name"
	if ck.kind != "" {
		what = "an RDS " + ck.kind + " endpoint"
	}
	user := fmt.Sprintf("user %q", cfg.User)
	switch {
	case cfg.User == "" && ck.in.source == sourceSecret:
		user = "user from the secret"
	case cfg.User == "":
		user = "no user"
	}
	s.Summary = fmt.Sprintf("%s, %s; %s; password: %s", ck.in.endpoint, what, user,
		ck.describeSource())
	if cfg.Addr != ck.in.endpoint {
		s.Summary += "; dialled at " + cfg.Addr
	}
	if ck.plan.Err != nil && !ck.tlsRefused() {
		return ck.fail(s, ck.plan.Err, diagnoseConfig())
	}
	if ck.in.source == sourceIAM && ck.kind == "" {
		s.Status = statusWarn
		s.Notes = append(s.Notes, "RDS accepts only tokens signed for its own endpoint name; "+
			"if this is a CNAME, tunnel or IP address, pass -iam-endpoint with the RDS endpoint")
	}
	return ck.done(s)
}

// describeSource names the password source without any value.
func (ck *checker) describeSource() string {
	if ck.plan.Err == nil && ck.plan.Source != "" {
		return ck.plan.Source
	}
	switch ck.in.source {
	case sourceIAM:
		return "an IAM token"
	case sourceSecret:
		return fmt.Sprintf("Secrets Manager secret %q", ck.in.secret)
	case sourceFile:
		return "a password file"
	}
	return "the DSN's password"
}

// tlsRefused reports whether rdsconn refuses the configuration because IAM
// would run without verified TLS, which step 3 explains.
func (ck *checker) tlsRefused() bool {
	if ck.in.source != sourceIAM {
		return false
	}
	switch ck.in.tlsParam {
	case "false", "skip-verify", "preferred":
		return true
	case "":
		return ck.in.noAutoTLS || ck.kind == ""
	}
	return false
}

// checkRegion is step 2: the AWS region and where it came from.
func (ck *checker) checkRegion(ctx context.Context) bool {
	s := &step{Number: stepRegion}
	if ck.in.source == sourceFile || ck.in.source == sourceDSN {
		return ck.skip(s, "not needed: the password does not come from AWS")
	}
	if ck.plan.Err != nil {
		return ck.skip(s, "not resolved: rdsconn refuses this configuration (see step 3)")
	}

	if a, err := arn.Parse(ck.in.secret); err == nil && ck.in.region == "" && a.Region != "" {
		ck.region, ck.regionFrom = a.Region, "the secret's ARN"
	} else {
		region, from, err := ck.conn.Region(ctx)
		if err != nil {
			s.Summary = "no AWS region found"
			return ck.fail(s, err, diagnoseRegion(err))
		}
		if from == "WithRegion" {
			from = "-region or rds-region (WithRegion)"
		}
		ck.region, ck.regionFrom = region, from
	}
	s.Facts = map[string]any{"region": ck.region, "from": ck.regionFrom}
	s.Summary = fmt.Sprintf("%s, from %s", ck.region, ck.regionFrom)

	if ck.in.source == sourceIAM {
		nameRegion, isRDS := rdsconn.RegionFromHost(ck.in.host)
		switch {
		case isRDS && nameRegion != ck.region:
			s.Status = statusWarn
			s.Notes = append(s.Notes, fmt.Sprintf("tokens will be signed for %s, but the "+
				"endpoint is in %s: RDS refuses them", ck.region, nameRegion))
		case !isRDS:
			s.Notes = append(s.Notes, fmt.Sprintf("the endpoint name does not say its region: "+
				"make sure the database is in %s", ck.region))
		}
	}
	return ck.done(s)
}

// checkTLS is step 3: whether connections use TLS, why, and what they
// verify.
func (ck *checker) checkTLS(context.Context) bool {
	s := &step{Number: stepTLS}
	if ck.plan.Err != nil {
		s.Summary = "IAM without verified TLS is refused: " + ck.tlsOffReason()
		return ck.fail(s, ck.plan.Err, ck.diagnoseTLSRefusal())
	}

	p := ck.plan
	roots, why := "", ""
	switch {
	case p.AutoTLS && p.EmbeddedRoots:
		roots, why = "the embedded Amazon RDS roots", "auto TLS for an RDS endpoint name"
	case p.AutoTLS:
		roots = "the embedded Amazon RDS roots and " + ck.flags.caBundle
		why = "auto TLS for an RDS endpoint name"
	case ck.in.tlsParam == "true":
		roots, why = "the system roots", "the DSN's tls=true"
	case ck.in.tlsParam == "skip-verify" || ck.in.tlsParam == "preferred":
		roots, why = "none", "the DSN's tls="+ck.in.tlsParam
		s.Status = statusWarn
		s.Notes = append(s.Notes, "anyone on the path can pose as the server; remove the "+
			"tls parameter to verify RDS names against the embedded roots")
	case p.TLS:
		roots, why = fmt.Sprintf("those of the registered TLS config %q", ck.in.tlsParam),
			"the DSN's tls="+ck.in.tlsParam
	}
	s.Facts = map[string]any{"on": p.TLS, "auto": p.AutoTLS, "why": why,
		"server_name": p.ServerName, "roots": roots}
	if !p.TLS {
		s.Facts["why"] = ck.tlsOffReason()
		s.Summary = "off: " + ck.tlsOffReason()
		s.Status = statusWarn
		s.Notes = append(s.Notes, "the session, including the data, is not encrypted; "+
			"add tls=true, or use the RDS endpoint name for auto TLS")
		return ck.done(s)
	}
	s.Summary = fmt.Sprintf("on (%s), server name %s, verified against %s", why,
		p.ServerName, roots)
	if roots == "none" {
		s.Summary = fmt.Sprintf("on (%s), but the certificate is not verified", why)
	}
	return ck.done(s)
}

// tlsOffReason says why TLS is off.
func (ck *checker) tlsOffReason() string {
	switch {
	case ck.in.tlsParam != "":
		return "the DSN has tls=" + ck.in.tlsParam
	case ck.in.noAutoTLS:
		return "auto TLS is turned off (-no-auto-tls or rds-auto-tls=false)"
	}
	return "the host is not an RDS endpoint name and the DSN has no tls parameter"
}

// checkCredentials is step 4: the AWS credentials, and who they belong to.
func (ck *checker) checkCredentials(ctx context.Context) bool {
	s := &step{Number: stepCredentials}
	if ck.in.source != sourceIAM && ck.in.source != sourceSecret {
		return ck.skip(s, "not needed: the password does not come from AWS")
	}
	cfg, err := ck.conn.AWSConfig(ctx)
	if err != nil {
		s.Summary = "the AWS config does not load"
		return ck.fail(s, err, diagnoseAWSConfig())
	}
	if cfg.Credentials == nil {
		err := errors.New("the AWS config has no credentials provider")
		return ck.fail(s, err, diagnoseNoCredentials())
	}
	cctx, cancel := context.WithTimeout(ctx, awsCallTimeout)
	creds, err := cfg.Credentials.Retrieve(cctx)
	cancel()
	if err != nil {
		s.Summary = "no AWS credentials"
		return ck.fail(s, err, diagnoseNoCredentials())
	}

	s.Facts = map[string]any{"provider": creds.Source, "access_key_id": maskKey(creds.AccessKeyID),
		"session": creds.SessionToken != ""}
	expiry := "they do not expire"
	if creds.CanExpire {
		s.Facts["expires"] = utc(creds.Expires)
		expiry = fmt.Sprintf("they expire at %s (in %s)", utc(creds.Expires),
			creds.Expires.Sub(ck.env.now()).Round(time.Second))
	}
	s.Summary = fmt.Sprintf("from %s, access key %s; %s", orUnknown(creds.Source),
		maskKey(creds.AccessKeyID), expiry)

	if err := ck.callerIdentity(ctx, cfg); err != nil {
		var ae smithy.APIError
		if errors.As(err, &ae) && isCredentialsFault(ae.ErrorCode()) {
			return ck.fail(s, err, diagnoseBadCredentials(ae.ErrorCode()))
		}
		s.Status = statusWarn
		s.Notes = append(s.Notes, "STS GetCallerIdentity failed, so the account and role are "+
			"unknown: "+firstLine(err))
		return ck.done(s)
	}
	s.Facts["account"], s.Facts["arn"] = ck.account, ck.identity
	s.Summary += fmt.Sprintf("; account %s, %s", ck.account, ck.identity)
	if ck.haveSkew {
		s.Facts["clock_skew"] = ck.skew.String()
		if abs(ck.skew) >= skewLimit && ck.in.source == sourceIAM {
			s.Status = statusWarn
			s.Notes = append(s.Notes, fmt.Sprintf("this host's clock is %s %s AWS's (from the "+
				"STS answer's Date): RDS refuses IAM tokens dated more than 5 minutes ahead or "+
				"more than 15 minutes back", abs(ck.skew), aheadOrBehind(ck.skew)))
		}
	}
	return ck.done(s)
}

// callerIdentity asks STS who the credentials belong to, and measures the
// clock difference from the answer's Date header.
func (ck *checker) callerIdentity(ctx context.Context, cfg aws.Config) error {
	region := ck.region
	if region == "" {
		region = "us-east-1"
	}
	client := sts.NewFromConfig(cfg, func(o *sts.Options) { o.Region = region })
	cctx, cancel := context.WithTimeout(ctx, awsCallTimeout)
	defer cancel()
	out, err := client.GetCallerIdentity(cctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		return err
	}
	ck.account, ck.identity = aws.ToString(out.Account), aws.ToString(out.Arn)
	server, ok1 := awsmiddleware.GetServerTime(out.ResultMetadata)
	local, ok2 := awsmiddleware.GetResponseAt(out.ResultMetadata)
	if ok1 && ok2 {
		// The Date header drops the fraction of a second: take the middle.
		server = server.Add(time.Second / 2)
		ck.skew, ck.haveSkew = local.Sub(server).Round(time.Second), true
	}
	return nil
}

// checkPassword is step 5: the token is built or the secret fetched, into
// the Connector's cache, and described without its value.
func (ck *checker) checkPassword(ctx context.Context) bool {
	s := &step{Number: stepPassword}
	built := ck.env.now()
	info, err := ck.conn.Refresh(ctx)
	if err != nil {
		s.Summary = "no password from " + ck.describeSource()
		return ck.fail(s, err, ck.diagnoseFetch(err))
	}
	ck.info = info
	s.Facts = map[string]any{"source": info.Source, "user": info.User}
	if !info.ReuseUntil.IsZero() {
		s.Facts["reuse_until"] = utc(info.ReuseUntil)
	}

	switch ck.in.source {
	case sourceIAM:
		valid := built.Add(tokenLifetime)
		s.Facts["valid_until"], s.Facts["region"] = utc(valid), ck.region
		s.Summary = fmt.Sprintf("IAM token built for user %q at %s in %s; valid until %s, "+
			"reused until %s", info.User, ck.plan.Endpoint, ck.region, utc(valid),
			utc(info.ReuseUntil))
	case sourceSecret:
		s.Facts["version_id"], s.Facts["stages"], s.Facts["keys"] =
			info.VersionID, info.Stages, info.Keys
		s.Summary = fmt.Sprintf("secret fetched: version %s (%s), user %q, keys %s",
			info.VersionID, strings.Join(info.Stages, ", "), info.User,
			strings.Join(info.Keys, ", "))
		ck.checkPending(ctx, s)
	case sourceFile:
		s.Summary = fmt.Sprintf("read from the %s; reused until %s", info.Source,
			utc(info.ReuseUntil))
	default:
		s.Summary = "the DSN's password (not shown)"
		if ck.cfg.Passwd == "" {
			s.Summary = "none: the DSN has no password and no source is set"
			s.Status = statusWarn
			s.Notes = append(s.Notes, "for IAM add -iam, for Secrets Manager -secret ID")
		}
	}
	return ck.done(s)
}

// checkPending looks for an AWSPENDING version of the secret other than the
// current one: the sign of a rotation under way or stopped half-way. The
// value is fetched, as rdsconn does during a rotation, and dropped unread.
func (ck *checker) checkPending(ctx context.Context, s *step) {
	cfg, err := ck.conn.AWSConfig(ctx)
	if err != nil {
		return
	}
	client := secretsmanager.NewFromConfig(cfg, func(o *secretsmanager.Options) {
		o.Region = ck.region
	})
	cctx, cancel := context.WithTimeout(ctx, awsCallTimeout)
	defer cancel()
	out, err := client.GetSecretValue(cctx, &secretsmanager.GetSecretValueInput{
		SecretId:     aws.String(ck.in.secret),
		VersionStage: aws.String("AWSPENDING"),
	})
	var notFound *smtypes.ResourceNotFoundException
	switch {
	case errors.As(err, &notFound):
		return
	case err != nil:
		s.Notes = append(s.Notes, "could not look for a rotation in progress: "+firstLine(err))
		return
	}
	if v := aws.ToString(out.VersionId); v != "" && v != ck.info.VersionID {
		ck.pendingVersion = v
		s.Facts["pending_version_id"] = v
		s.Status = statusWarn
		s.Notes = append(s.Notes, fmt.Sprintf("version %s is AWSPENDING: a rotation is in "+
			"progress, or stopped half-way", v))
	}
}

// checkConnection is step 6: a connection through rdsconn, and what the
// server says about it.
func (ck *checker) checkConnection(ctx context.Context) bool {
	s := &step{Number: stepConnection}
	db := sql.OpenDB(ck.conn)
	defer db.Close()

	start := ck.env.now()
	conn, err := db.Conn(ctx)
	took := ck.env.now().Sub(start)
	if err != nil {
		s.Summary = "the connection failed"
		var me *mysql.MySQLError
		var ve *tls.CertificateVerificationError
		switch {
		case errors.As(err, &me):
			s.Summary = fmt.Sprintf("the server refused the login (error %d)", me.Number)
		case errors.As(err, &ve):
			s.Summary = "the server's certificate did not verify"
		}
		return ck.fail(s, err, ck.diagnoseConnect(err))
	}
	defer conn.Close()

	facts := map[string]any{"connect_time": took.Round(time.Microsecond).String()}
	var version, user, tlsVersion, cipher string
	_ = conn.QueryRowContext(ctx, "SELECT VERSION()").Scan(&version)
	_ = conn.QueryRowContext(ctx, "SELECT CURRENT_USER()").Scan(&user)
	tlsVersion = statusValue(ctx, conn, "Ssl_version")
	cipher = statusValue(ctx, conn, "Ssl_cipher")
	rtt := roundTrip(ctx, conn, ck.env.now)
	facts["server_version"], facts["current_user"] = version, user
	facts["tls_version"], facts["tls_cipher"] = tlsVersion, cipher
	facts["round_trip"] = rtt.String()
	s.Facts = facts

	over := "without TLS"
	if tlsVersion != "" {
		over = fmt.Sprintf("over %s (%s)", tlsVersion, cipher)
	}
	s.Summary = fmt.Sprintf("connected in %s as %s to MySQL %s %s; round trip %s",
		took.Round(time.Millisecond/10), orUnknown(user), orUnknown(version), over, rtt)

	if ck.log.count(evPending) > 0 {
		s.Status = statusWarn
		s.Notes = append(s.Notes, "the database refused AWSCURRENT and accepted AWSPENDING: a "+
			"rotation is in progress; if it lasts, check the rotation function's logs")
	} else if ck.log.count(evRetried) > 0 {
		s.Status = statusWarn
		s.Notes = append(s.Notes, "the cached password was refused and a fresh one worked")
	}
	return ck.done(s)
}

// statusValue reads a session status variable, or "" when the server does
// not answer.
func statusValue(ctx context.Context, conn *sql.Conn, name string) string {
	var n, v string
	if conn.QueryRowContext(ctx, "SHOW STATUS LIKE '"+name+"'").Scan(&n, &v) != nil {
		return ""
	}
	return v
}

// roundTrip returns the shortest of three pings.
func roundTrip(ctx context.Context, conn *sql.Conn, now func() time.Time) time.Duration {
	best := time.Duration(0)
	for range 3 {
		start := now()
		if conn.PingContext(ctx) != nil {
			break
		}
		if d := now().Sub(start); best == 0 || d < best {
			best = d
		}
	}
	return best.Round(time.Microsecond)
}

func firstLine(err error) string {
	line, _, _ := strings.Cut(err.Error(), "\n")
	return line
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}

func abs(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

func aheadOrBehind(skew time.Duration) string {
	if skew < 0 {
		return "behind"
	}
	return "ahead of"
}
