package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"

	"github.com/aws/smithy-go"
	"github.com/go-sql-driver/mysql"

	"github.com/rdsconn/rdsconn"
)

// diagnosis is what a failure usually means: a short code for scripts, a
// sentence, and what to do.
type diagnosis struct {
	cause  string
	why    string
	advice []string
}

// Causes check diagnoses. They appear in the output and in -json.
const (
	causeDSN             = "dsn"
	causeConfig          = "config"
	causeNoRegion        = "no-region"
	causeAWSConfig       = "aws-config"
	causeTLSOff          = "tls-off"
	causeCNAME           = "cname"
	causeNoCredentials   = "no-credentials"
	causeBadCredentials  = "bad-credentials"
	causeSecretFormat    = "secret-format"
	causeSecretNotFound  = "secret-not-found"
	causeSecretDenied    = "secret-access-denied"
	causeSecretKMS       = "secret-kms"
	causeAWSError        = "aws-error"
	causePasswordFile    = "password-file"
	causeFetch           = "fetch"
	causeUnknownCA       = "unknown-ca"
	causeTLSName         = "tls-name"
	causeCertInvalid     = "certificate-invalid"
	causeWrongRegion     = "wrong-region"
	causeClockSkew       = "clock-skew"
	causeIAMDenied       = "iam-denied"
	causeRotation        = "rotation-in-progress"
	causeSecretRefused   = "secret-refused"
	causePasswordRefused = "password-refused"
	causeServerError     = "server-error"
	causeDNS             = "dns"
	causeUnreachable     = "unreachable"
	causeTimeout         = "timeout"
	causeUnknown         = "unknown"
)

func diagnoseDSN() diagnosis {
	return diagnosis{
		cause: causeDSN,
		why:   "the DSN is not in go-sql-driver's form",
		advice: []string{"write it as user@tcp(host:port)/dbname?param=value, such as " +
			"'app@tcp(db1.abc123.us-east-1.rds.amazonaws.com:3306)/shop?rds-iam=true'"},
	}
}

func diagnoseConfig() diagnosis {
	return diagnosis{
		cause:  causeConfig,
		why:    "rdsconn refuses this configuration before dialling",
		advice: []string{"change the DSN or the flags as the error says; nothing was sent"},
	}
}

func diagnoseRegion(err error) diagnosis {
	if !errors.Is(err, rdsconn.ErrConfig) {
		return diagnoseAWSConfig()
	}
	d := diagnosis{
		cause: causeNoRegion,
		why: "no AWS region: the endpoint name does not say one, the AWS config has none, " +
			"and EC2 instance metadata gave none",
		advice: []string{"give the region: -region REGION (rds-region=REGION in the DSN, " +
			"WithRegion in code, or AWS_REGION in the environment)"},
	}
	if strings.EqualFold(os.Getenv("AWS_EC2_METADATA_DISABLED"), "true") {
		d.advice = append(d.advice, "instance metadata is turned off here "+
			"(AWS_EC2_METADATA_DISABLED=true)")
	} else {
		d.advice = append(d.advice, "instance metadata did not answer within a second: off "+
			"EC2 it never does; in a container on EC2 raise the hop limit (aws ec2 "+
			"modify-instance-metadata-options --http-put-response-hop-limit 2)")
	}
	d.advice = append(d.advice, "or use the RDS endpoint name, which carries the region "+
		"(-iam-endpoint for IAM through a tunnel or CNAME)")
	return d
}

func diagnoseAWSConfig() diagnosis {
	return diagnosis{
		cause: causeAWSConfig,
		why:   "the AWS SDK's default config does not load",
		advice: []string{"check AWS_PROFILE, AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE " +
			"and the profile's settings in ~/.aws/config"},
	}
}

func diagnoseNoCredentials() diagnosis {
	return diagnosis{
		cause: causeNoCredentials,
		why:   "the AWS SDK found no credentials",
		advice: []string{"set AWS_PROFILE (and run aws sso login for SSO), or " +
			"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run with an instance, task or " +
			"pod role"},
	}
}

// isCredentialsFault reports whether an STS error code means the
// credentials themselves are bad, rather than STS being unreachable.
func isCredentialsFault(code string) bool {
	switch code {
	case "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken",
		"ExpiredTokenException", "UnrecognizedClientException", "RequestExpired":
		return true
	}
	return false
}

func diagnoseBadCredentials(code string) diagnosis {
	d := diagnosis{cause: causeBadCredentials}
	switch code {
	case "ExpiredToken", "ExpiredTokenException":
		d.why = "the session credentials have expired"
		d.advice = []string{"get new ones: aws sso login, assume the role again, or let the " +
			"instance or task role provider refresh them"}
	case "SignatureDoesNotMatch", "RequestExpired":
		d.why = "AWS refused the request signature: a wrong secret access key, or this " +
			"host's clock is off"
		d.advice = []string{"check the secret access key that goes with the access key id, " +
			"and synchronise this host's clock"}
	default:
		d.why = "AWS does not know this access key: it was deleted or deactivated"
		d.advice = []string{"create a new access key, or use a role"}
	}
	return d
}

// diagnoseTLSRefusal explains why rdsconn refuses IAM without verified TLS.
func (ck *checker) diagnoseTLSRefusal() diagnosis {
	why := "an IAM token is a bearer credential: rdsconn sends it only over verified TLS, " +
		"and RDS refuses IAM logins without TLS"
	switch {
	case ck.in.tlsParam != "":
		return diagnosis{cause: causeTLSOff, why: why, advice: []string{fmt.Sprintf(
			"remove tls=%s from the DSN: auto TLS verifies RDS endpoint names against the "+
				"embedded roots", ck.in.tlsParam)}}
	case ck.in.noAutoTLS:
		return diagnosis{cause: causeTLSOff, why: why, advice: []string{"drop -no-auto-tls " +
			"(rds-auto-tls=false) so that auto TLS verifies RDS names against the embedded " +
			"roots, or name a registered tls= config that trusts the RDS CAs"}}
	}
	return diagnosis{
		cause: causeCNAME,
		why: fmt.Sprintf("%s is not an RDS endpoint name (a CNAME, tunnel or IP address): "+
			"auto TLS is off for it, and RDS refuses a token signed for it", ck.in.host),
		advice: []string{fmt.Sprintf("pass the RDS endpoint with -iam-endpoint HOST:PORT "+
			"(rds-iam-endpoint, WithIAMEndpoint): the token and the TLS server name use it "+
			"while %s is still what is dialled", ck.cfg.Addr)},
	}
}

// diagnoseFetch explains why the token or secret could not be had.
func (ck *checker) diagnoseFetch(err error) diagnosis {
	var ae smithy.APIError
	switch {
	case errors.Is(err, rdsconn.ErrSecretFormat):
		return diagnosis{
			cause: causeSecretFormat,
			why: "the secret's value is not what rdsconn reads: a JSON object with a " +
				`non-empty "password"`,
			advice: []string{`store the secret as JSON, {"username":"app","password":"..."}, ` +
				"the form RDS and its rotation functions write; other keys are ignored"},
		}
	case errors.Is(err, rdsconn.ErrConfig):
		return diagnosis{cause: causeConfig, why: "rdsconn cannot use what the source gave",
			advice: []string{"name the database user in the DSN (user@tcp(host:port)/db) or " +
				`add "username" to the secret`}}
	case errors.As(err, &ae):
		return ck.diagnoseAWSError(ae)
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission):
		return diagnosis{cause: causePasswordFile, why: "the password file cannot be read",
			advice: []string{"check the path and that this user may read it"}}
	case errors.Is(err, context.DeadlineExceeded):
		return diagnoseTimeout("AWS")
	}
	return diagnosis{cause: causeFetch, why: "the password source failed",
		advice: []string{"see the error; run with -v for rdsconn's log"}}
}

func (ck *checker) diagnoseAWSError(ae smithy.APIError) diagnosis {
	who := "your IAM identity"
	if ck.identity != "" {
		who = ck.identity
	}
	switch ae.ErrorCode() {
	case "ResourceNotFoundException":
		return diagnosis{cause: causeSecretNotFound,
			why: fmt.Sprintf("Secrets Manager in %s has no secret %q", ck.region, ck.in.secret),
			advice: []string{fmt.Sprintf("check the name, or give the secret's full ARN; the "+
				"region came from %s (-region changes it)", ck.regionFrom)}}
	case "AccessDeniedException":
		return diagnosis{cause: causeSecretDenied,
			why: who + " may not read the secret",
			advice: []string{"allow secretsmanager:GetSecretValue on the secret, and " +
				"kms:Decrypt on its key when that is a customer managed key"}}
	case "DecryptionFailure":
		return diagnosis{cause: causeSecretKMS,
			why:    "Secrets Manager could not decrypt the secret with its KMS key for " + who,
			advice: []string{"allow kms:Decrypt on the secret's KMS key"}}
	}
	return diagnosis{cause: causeAWSError, why: "AWS answered " + ae.ErrorCode(),
		advice: []string{"see the error; AWS's message names what is wrong"}}
}

// diagnoseConnect explains a failed connection.
func (ck *checker) diagnoseConnect(err error) diagnosis {
	var (
		hostErr x509.HostnameError
		caErr   x509.UnknownAuthorityError
		certErr x509.CertificateInvalidError
		me      *mysql.MySQLError
		dnsErr  *net.DNSError
		netErr  net.Error
		opErr   *net.OpError
	)
	switch {
	case errors.Is(err, rdsconn.ErrConfig):
		return diagnoseConfig()
	case errors.As(err, &hostErr):
		return ck.diagnoseHostname(hostErr)
	case errors.Is(err, rdsconn.ErrUnknownCA) || errors.As(err, &caErr):
		return ck.diagnoseUnknownCA()
	case errors.As(err, &certErr):
		return diagnosis{cause: causeCertInvalid,
			why: "the server's certificate is not valid now (expired, or not yet valid)",
			advice: []string{"check this host's clock; if the clock is right, the " +
				"certificate must be rotated on the server (aws rds modify-db-instance " +
				"--ca-certificate-identifier rds-ca-rsa2048-g1)"}}
	case errors.As(err, &me) && (me.Number == 1045 || me.Number == 1698):
		return ck.diagnoseAccessDenied()
	case errors.As(err, &me):
		return diagnoseServerError(me)
	case errors.As(err, &dnsErr):
		return diagnosis{cause: causeDNS, why: "the endpoint name does not resolve here",
			advice: []string{"check the name; a private endpoint resolves only inside its VPC " +
				"or through a resolver that forwards to it"}}
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &netErr) && netErr.Timeout():
		return diagnoseTimeout("the database")
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return diagnosis{cause: causeUnreachable, why: "nothing accepts connections at " +
			ck.cfg.Addr,
			advice: []string{"check the host and port, that the instance is available, and " +
				"that its security group lets this host in on the port"}}
	}
	return diagnosis{cause: causeUnknown, why: "the connection failed for a reason check " +
		"does not know", advice: []string{"run with -v to see rdsconn's log"}}
}

func diagnoseTimeout(what string) diagnosis {
	return diagnosis{cause: causeTimeout, why: what + " did not answer in time",
		advice: []string{"a security group, network ACL or firewall that drops the traffic " +
			"is the usual cause; a private instance is not reachable from outside its VPC; " +
			"-timeout gives more time"}}
}

func diagnoseServerError(me *mysql.MySQLError) diagnosis {
	d := diagnosis{cause: causeServerError, why: fmt.Sprintf("the server refused the "+
		"connection with error %d", me.Number)}
	switch me.Number {
	case 1040:
		d.advice = []string{"too many connections: lower the pools' SetMaxOpenConns or raise " +
			"max_connections"}
	case 1129:
		d.advice = []string{"the host is blocked after connection errors: FLUSH HOSTS, or " +
			"raise max_connect_errors"}
	case 3159:
		d.advice = []string{"the server requires TLS (require_secure_transport): use the " +
			"RDS endpoint name for auto TLS, or add tls=true"}
	default:
		d.advice = []string{"see the server's message"}
	}
	return d
}

func (ck *checker) diagnoseHostname(h x509.HostnameError) diagnosis {
	rdsName := ""
	for _, n := range h.Certificate.DNSNames {
		if _, ok := rdsconn.RegionFromHost(n); ok && !strings.HasPrefix(n, "*.") {
			rdsName = n
			break
		}
	}
	_, port, _ := net.SplitHostPort(ck.in.endpoint)
	target := "HOST:PORT"
	if rdsName != "" {
		target = net.JoinHostPort(rdsName, port)
	}
	d := diagnosis{cause: causeTLSName, why: fmt.Sprintf("the server's certificate is for "+
		"%s, not for %s", strings.Join(h.Certificate.DNSNames, ", "), h.Host)}
	if ck.in.source == sourceIAM {
		d.cause = causeCNAME
		d.why += ": " + h.Host + " is a CNAME or alias, and RDS would also refuse a token " +
			"signed for it"
		d.advice = []string{fmt.Sprintf("pass the RDS endpoint: -iam-endpoint %s "+
			"(rds-iam-endpoint, WithIAMEndpoint); the token and the TLS server name use it "+
			"while %s is still what is dialled", target, ck.cfg.Addr)}
		return d
	}
	d.advice = []string{fmt.Sprintf("put the RDS endpoint name %s in the DSN instead of %s",
		target, h.Host)}
	return d
}

func (ck *checker) diagnoseUnknownCA() diagnosis {
	d := diagnosis{cause: causeUnknownCA}
	if !ck.plan.AutoTLS {
		d.why = "the server's certificate does not chain to the roots the DSN's TLS " +
			"config trusts (tls=true means the system roots, which lack the RDS CAs)"
		d.advice = []string{"remove the tls parameter so that auto TLS verifies RDS names " +
			"against the embedded roots, or use a registered TLS config with your bundle"}
		return d
	}
	d.why = "the server's certificate does not chain to the embedded Amazon RDS roots, " +
		"which lack regions newer than the bundle (ca-west-1, il-central-1, mx-central-1, " +
		"ap-southeast-5, ap-southeast-7, ap-east-2), GovCloud and China"
	if ck.flags.caBundle != "" {
		d.why += ", nor to " + ck.flags.caBundle
	}
	d.advice = []string{"download your region's bundle from " +
		"https://truststore.pki.rds.amazonaws.com and pass it with -ca-bundle FILE " +
		"(WithRootCAs in code)"}
	return d
}

// diagnoseAccessDenied explains a 1045 that survived rdsconn's fresh fetch
// and retry.
func (ck *checker) diagnoseAccessDenied() diagnosis {
	switch ck.in.source {
	case sourceIAM:
		return ck.diagnoseIAMDenied()
	case sourceSecret:
		if ck.pendingVersion != "" {
			return diagnosis{cause: causeRotation,
				why: fmt.Sprintf("the database accepts neither AWSCURRENT (version %s) nor "+
					"AWSPENDING (version %s): a rotation stopped half-way", ck.info.VersionID,
					ck.pendingVersion),
				advice: []string{"read the rotation function's log in CloudWatch, fix what " +
					"failed, then run aws secretsmanager rotate-secret --secret-id " +
					ck.in.secret + " again"}}
		}
		return diagnosis{cause: causeSecretRefused,
			why: fmt.Sprintf("the database refuses the password of AWSCURRENT (version %s) "+
				"for user %q", ck.info.VersionID, ck.info.User),
			advice: []string{"the secret is out of date (a rotation that failed, or a " +
				"password changed by hand), or it is for another user or instance: set the " +
				"user's password to the secret's, or rotate the secret"}}
	}
	return diagnosis{cause: causePasswordRefused, why: "the database refuses the password for " +
		"user " + ck.cfg.User, advice: []string{"check the user name and the password"}}
}

// diagnoseIAMDenied narrows down why RDS refused a token: a CNAME, a region
// or a clock it can see, else the two causes it cannot tell apart.
func (ck *checker) diagnoseIAMDenied() diagnosis {
	nameRegion, isRDS := rdsconn.RegionFromHost(ck.in.host)
	switch {
	case !isRDS:
		return diagnosis{cause: causeCNAME,
			why: fmt.Sprintf("the token was signed for %s, which is not an RDS endpoint "+
				"name; RDS accepts only tokens signed for its own name", ck.in.endpoint),
			advice: []string{"pass the RDS endpoint: -iam-endpoint HOST:PORT " +
				"(rds-iam-endpoint, WithIAMEndpoint); the DSN address is still what is dialled"}}
	case nameRegion != ck.region:
		d := diagnosis{cause: causeWrongRegion,
			why: fmt.Sprintf("the token was signed for %s (from %s), but the endpoint is "+
				"in %s", ck.region, ck.regionFrom, nameRegion)}
		d.advice = []string{fmt.Sprintf("drop -region, rds-region or WithRegion: rdsconn "+
			"takes %s from the endpoint name", nameRegion)}
		return d
	case ck.haveSkew && abs(ck.skew) >= skewLimit:
		return diagnosis{cause: causeClockSkew,
			why: fmt.Sprintf("this host's clock is %s %s AWS's, so RDS sees the token as "+
				"expired or not yet valid", abs(ck.skew), aheadOrBehind(ck.skew)),
			advice: []string{"synchronise the clock: chrony or systemd-timesyncd, with the " +
				"Amazon Time Sync Service (169.254.169.123) on EC2"}}
	}

	account, who := ck.account, ck.identity
	if account == "" {
		account, who = "ACCOUNT", "your IAM identity"
	}
	resource, describe := "db-RESOURCEID", "the DbiResourceId from aws rds describe-db-instances"
	switch ck.kind {
	case "cluster", "cluster reader", "cluster custom":
		resource = "cluster-RESOURCEID"
		describe = "the DbClusterResourceId from aws rds describe-db-clusters"
	case "proxy":
		resource, describe = "prx-RESOURCEID", "the proxy's id, at the end of its DBProxyArn"
	}
	user := ck.info.User
	return diagnosis{cause: causeIAMDenied,
		why: "RDS checked the token and refused it; for a token signed for the right " +
			"endpoint, region and time that leaves two causes, which look the same from here",
		advice: []string{
			fmt.Sprintf("allow %s rds-db:connect on arn:aws:rds-db:%s:%s:dbuser:%s/%s (%s, "+
				"not the name), and turn on IAM database authentication on the instance or "+
				"cluster", who, ck.region, account, resource, user, describe),
			fmt.Sprintf("create the user for IAM: CREATE USER '%s'@'%%' IDENTIFIED WITH "+
				"AWSAuthenticationPlugin AS 'RDS'; (SELECT user, plugin FROM mysql.user shows "+
				"a user's plugin)", user),
		}}
}
