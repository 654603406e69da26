package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/rdsconn/rdsconn"
)

// connFlags are the flags that mirror rdsconn's options.
type connFlags struct {
	iam          bool
	iamEndpoint  string
	secret       string
	passwordFile string
	region       string
	noAutoTLS    bool
	caBundle     string
	timeout      time.Duration
	verbose      bool
}

// register adds the flags to fs. sources adds the password-source flags,
// which the token subcommand does not take.
func (f *connFlags) register(fs *flag.FlagSet, sources bool) {
	if sources {
		fs.BoolVar(&f.iam, "iam", false, "use an RDS IAM token as the password (rds-iam=true)")
		fs.StringVar(&f.secret, "secret", "",
			"take the password from this Secrets Manager secret `id` (rds-secret)")
		fs.StringVar(&f.passwordFile, "password-file", "",
			"take the password from this `file` (rds-password-file)")
		fs.BoolVar(&f.noAutoTLS, "no-auto-tls", false,
			"do not turn TLS on for RDS endpoint names (rds-auto-tls=false)")
	}
	fs.StringVar(&f.iamEndpoint, "iam-endpoint", "",
		"sign tokens for this RDS `host:port` while dialling the DSN address (rds-iam-endpoint)")
	fs.StringVar(&f.region, "region", "",
		"the AWS `region` (rds-region); found by itself if empty")
	fs.StringVar(&f.caBundle, "ca-bundle", "",
		"PEM `file` of root certificates to trust besides the embedded RDS roots")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "give up after this long")
	fs.BoolVar(&f.verbose, "v", false, "also print details and rdsconn's log (never a secret)")
}

// options turns the flags into rdsconn options. The CA bundle is read here,
// so a missing file is reported before anything else.
func (f *connFlags) options() ([]rdsconn.Option, error) {
	var opts []rdsconn.Option
	if f.iam {
		opts = append(opts, rdsconn.WithIAM())
	}
	if f.iamEndpoint != "" {
		opts = append(opts, rdsconn.WithIAMEndpoint(f.iamEndpoint))
	}
	if f.secret != "" {
		opts = append(opts, rdsconn.WithSecret(f.secret))
	}
	if f.passwordFile != "" {
		opts = append(opts, rdsconn.WithPasswordFile(f.passwordFile))
	}
	if f.region != "" {
		opts = append(opts, rdsconn.WithRegion(f.region))
	}
	if f.noAutoTLS {
		opts = append(opts, rdsconn.WithoutAutoTLS())
	}
	if f.caBundle != "" {
		pem, err := os.ReadFile(f.caBundle)
		if err != nil {
			return nil, fmt.Errorf("reading the CA bundle: %w", err)
		}
		pool := rdsconn.RootCAs()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("the CA bundle %s holds no PEM certificate", f.caBundle)
		}
		opts = append(opts, rdsconn.WithRootCAs(pool))
	}
	return opts, nil
}

// Password sources, as intent.source reports them.
const (
	sourceIAM    = "iam"
	sourceSecret = "secret"
	sourceFile   = "file"
	sourceDSN    = "dsn"
)

// intent is what the DSN's rds- parameters and the flags ask for, with the
// flags winning as options win over DSN parameters in rdsconn.New. The
// command needs it to explain a configuration that rdsconn refuses, for
// which the Connector's Plan says nothing.
type intent struct {
	source      string
	iamEndpoint string
	secret      string
	region      string
	noAutoTLS   bool
	endpoint    string // host:port tokens are signed for and TLS verifies
	host        string // endpoint's host
	tlsParam    string // the DSN's tls parameter
}

// resolveIntent reads the rds- parameters of cfg (before rdsconn.New removes
// them from its copy) and applies the flags over them.
func resolveIntent(cfg *mysql.Config, f *connFlags) intent {
	in := intent{source: sourceDSN, tlsParam: cfg.TLSConfig}
	p := cfg.Params
	if on, _ := strconv.ParseBool(p["rds-iam"]); on || p["rds-iam-endpoint"] != "" {
		in.source = sourceIAM
	}
	in.iamEndpoint, in.secret, in.region = p["rds-iam-endpoint"], p["rds-secret"], p["rds-region"]
	if p["rds-secret"] != "" {
		in.source = sourceSecret
	}
	if p["rds-password-file"] != "" {
		in.source = sourceFile
	}
	if on, err := strconv.ParseBool(p["rds-auto-tls"]); err == nil && !on {
		in.noAutoTLS = true
	}

	switch {
	case f.iam || f.iamEndpoint != "":
		in.source = sourceIAM
	case f.secret != "":
		in.source = sourceSecret
	case f.passwordFile != "":
		in.source = sourceFile
	}
	if f.iamEndpoint != "" {
		in.iamEndpoint = f.iamEndpoint
	}
	if f.secret != "" {
		in.secret = f.secret
	}
	if f.region != "" {
		in.region = f.region
	}
	in.noAutoTLS = in.noAutoTLS || f.noAutoTLS

	in.endpoint = in.iamEndpoint
	if in.endpoint == "" {
		in.endpoint = cfg.Addr
		if _, _, err := net.SplitHostPort(in.endpoint); err != nil && in.endpoint != "" {
			in.endpoint = net.JoinHostPort(in.endpoint, "3306")
		}
	}
	in.host, _, _ = net.SplitHostPort(in.endpoint)
	return in
}

// kindOf returns the kind of RDS endpoint host:port is, as rdsconn sees it,
// or "" when it is not an RDS endpoint name.
func kindOf(endpoint string) string {
	cfg := mysql.NewConfig()
	cfg.Addr = endpoint
	c := rdsconn.New(cfg)
	defer c.Close()
	return c.Plan().Kind
}

// newFlagSet makes a subcommand's flag set, printing its usage to stderr.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: rdsconn %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}
