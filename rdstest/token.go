package rdstest

import (
	"context"
	"crypto/hmac"
	"crypto/subtle"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

const (
	// tokenService is the SigV4 signing name of RDS IAM database auth.
	tokenService = "rds-db"
	// tokenExpiresMax is the longest validity RDS accepts, and what the SDK asks for.
	tokenExpiresMax = 900 * time.Second
	// tokenClockSkew is how far ahead of the endpoint's clock a token may be dated.
	tokenClockSkew = 5 * time.Minute
	// emptyPayloadHash is SHA-256 of nothing: a presigned GET has no body.
	emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	amzDateLayout    = "20060102T150405Z"
)

// Reason says why an endpoint refused a login. Endpoints count refusals by
// reason, so a test can assert why a token or a password was not accepted.
type Reason string

const (
	// ReasonNoTLS means the client sent its password, or tried to log in,
	// without first switching the connection to TLS: always refused by an
	// IAMEndpoint, and by a PasswordEndpoint with RequireTLS.
	ReasonNoTLS Reason = "no-tls"
	// ReasonNoPassword means the client sent an empty password.
	ReasonNoPassword Reason = "no-password"
	// ReasonUnknownUser means the MySQL user is not one the endpoint lets
	// log in (see AddUser).
	ReasonUnknownUser Reason = "unknown-user"
	// ReasonWrongPassword means the password is not the user's current
	// one on a PasswordEndpoint, as after SetPassword.
	ReasonWrongPassword Reason = "wrong-password"
	// ReasonMalformed means the password does not parse as an RDS IAM token:
	// a missing or repeated query parameter, a bad date, a wrong path.
	ReasonMalformed Reason = "malformed"
	// ReasonWrongEndpoint means the token's host or port is not the
	// endpoint's configured host and port.
	ReasonWrongEndpoint Reason = "wrong-endpoint"
	// ReasonWrongAction means the token's Action is not "connect".
	ReasonWrongAction Reason = "wrong-action"
	// ReasonWrongDBUser means the token's DBUser differs from the MySQL user
	// name in the handshake.
	ReasonWrongDBUser Reason = "wrong-dbuser"
	// ReasonAlgorithm means X-Amz-Algorithm is not AWS4-HMAC-SHA256.
	ReasonAlgorithm Reason = "wrong-algorithm"
	// ReasonWrongRegion means the credential scope names another region.
	ReasonWrongRegion Reason = "wrong-region"
	// ReasonWrongService means the credential scope names a signing service
	// other than rds-db.
	ReasonWrongService Reason = "wrong-service"
	// ReasonUnknownKey means the access key id is not one the endpoint
	// trusts, for instance after RevokeCredentials.
	ReasonUnknownKey Reason = "unknown-key"
	// ReasonBadExpires means X-Amz-Expires is missing, not a number, or
	// outside 1 to 900 seconds.
	ReasonBadExpires Reason = "bad-expires"
	// ReasonNotYetValid means X-Amz-Date is more than five minutes ahead of
	// the endpoint's clock.
	ReasonNotYetValid Reason = "not-yet-valid"
	// ReasonExpired means the endpoint's clock is past X-Amz-Date plus
	// X-Amz-Expires.
	ReasonExpired Reason = "expired"
	// ReasonSecurityToken means the credentials have a session token and the
	// token's X-Amz-Security-Token is missing or different, or the
	// credentials have none and the token carries one.
	ReasonSecurityToken Reason = "security-token"
	// ReasonBadSignature means the signature recomputed from the trusted
	// secret key differs from X-Amz-Signature, as after any tampering.
	ReasonBadSignature Reason = "bad-signature"
)

// TokenFacts are the non-secret facts of a token the IAM endpoint checked:
// never the signature, the session token or the token itself.
type TokenFacts struct {
	// User is the MySQL user name the client logged in as.
	User string
	// DBUser is the token's DBUser parameter.
	DBUser string
	// HostPort is the host and port the token was signed for.
	HostPort string
	// AccessKeyID is the access key id from the credential scope.
	AccessKeyID string
	// Region is the region from the credential scope.
	Region string
	// Date is the token's signing time, X-Amz-Date.
	Date time.Time
	// Expires is the token's X-Amz-Expires.
	Expires time.Duration
	// HasSecurityToken says whether the token carried X-Amz-Security-Token.
	HasSecurityToken bool
	// Reason is why the token was refused, or empty if it was accepted.
	Reason Reason
}

// TokenAt builds an RDS IAM auth token exactly as auth.BuildAuthToken does,
// but signed at time t instead of now, so that a test can make tokens that
// are expired or not yet valid. The endpoint is host:port, as for
// BuildAuthToken.
func TokenAt(ctx context.Context, endpoint, region, user string, creds aws.Credentials,
	t time.Time) (string, error) {
	host, port, err := net.SplitHostPort(endpoint)
	if err != nil {
		return "", fmt.Errorf("rdstest: endpoint %q is not host:port: %w", endpoint, err)
	}
	if _, err := strconv.Atoi(port); err != nil || host == "" {
		return "", fmt.Errorf("rdstest: endpoint %q needs a host and a numeric port", endpoint)
	}

	q := url.Values{}
	q.Set("Action", "connect")
	q.Set("DBUser", user)
	q.Set("X-Amz-Expires", strconv.Itoa(int(tokenExpiresMax/time.Second)))
	signed, err := presign(ctx, endpoint, q, region, creds, t)
	if err != nil {
		return "", err
	}
	return strings.TrimPrefix(signed, "https://"), nil
}

func presign(ctx context.Context, hostPort string, q url.Values, region string,
	creds aws.Credentials, t time.Time) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		"https://"+hostPort+"?"+q.Encode(), nil)
	if err != nil {
		return "", fmt.Errorf("rdstest: building token request: %w", err)
	}
	signed, _, err := v4.NewSigner().PresignHTTP(ctx, creds, req, emptyPayloadHash,
		tokenService, region, t.UTC())
	if err != nil {
		return "", fmt.Errorf("rdstest: signing token: %w", err)
	}
	return signed, nil
}

// tokenPolicy is what a token is checked against.
type tokenPolicy struct {
	hostPort string
	region   string
	user     string
	now      time.Time
	creds    func(akid string) (aws.Credentials, bool)
}

// checkToken checks a password as RDS checks an IAM auth token. It returns
// the facts it could read and, when it refuses the token, why.
func checkToken(ctx context.Context, token string, p tokenPolicy) TokenFacts {
	facts := TokenFacts{User: p.user}
	deny := func(r Reason) TokenFacts {
		facts.Reason = r
		return facts
	}

	// The SDK writes host:port?query; older versions wrote host:port/?query.
	hostPort, rawQuery, ok := strings.Cut(token, "?")
	hostPort = strings.TrimSuffix(hostPort, "/")
	if !ok || strings.Contains(hostPort, "/") {
		return deny(ReasonMalformed)
	}
	facts.HostPort = hostPort
	query, err := url.ParseQuery(rawQuery)
	if err != nil {
		return deny(ReasonMalformed)
	}
	params := make(map[string]string, len(query))
	for k, v := range query {
		if len(v) != 1 {
			return deny(ReasonMalformed)
		}
		params[k] = v[0]
	}
	for _, k := range []string{"Action", "DBUser", "X-Amz-Algorithm", "X-Amz-Credential",
		"X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Signature"} {
		if params[k] == "" {
			return deny(ReasonMalformed)
		}
	}
	facts.DBUser = params["DBUser"]
	_, facts.HasSecurityToken = params["X-Amz-Security-Token"]

	date, err := time.Parse(amzDateLayout, params["X-Amz-Date"])
	if err != nil {
		return deny(ReasonMalformed)
	}
	facts.Date = date
	scope := strings.Split(params["X-Amz-Credential"], "/")
	if len(scope) != 5 || scope[1] != date.Format("20060102") || scope[4] != "aws4_request" {
		return deny(ReasonMalformed)
	}
	facts.AccessKeyID, facts.Region = scope[0], scope[2]
	if params["X-Amz-SignedHeaders"] != "host" {
		return deny(ReasonMalformed)
	}
	secs, err := strconv.Atoi(params["X-Amz-Expires"])
	if err == nil && secs >= 1 && time.Duration(secs)*time.Second <= tokenExpiresMax {
		facts.Expires = time.Duration(secs) * time.Second
	}

	if !sameHostPort(hostPort, p.hostPort) {
		return deny(ReasonWrongEndpoint)
	}
	if params["Action"] != "connect" {
		return deny(ReasonWrongAction)
	}
	if facts.DBUser != p.user {
		return deny(ReasonWrongDBUser)
	}
	if params["X-Amz-Algorithm"] != "AWS4-HMAC-SHA256" {
		return deny(ReasonAlgorithm)
	}
	if facts.Region != p.region {
		return deny(ReasonWrongRegion)
	}
	if scope[3] != tokenService {
		return deny(ReasonWrongService)
	}
	creds, ok := p.creds(facts.AccessKeyID)
	if !ok {
		return deny(ReasonUnknownKey)
	}

	if facts.Expires == 0 {
		return deny(ReasonBadExpires)
	}
	if p.now.Before(date.Add(-tokenClockSkew)) {
		return deny(ReasonNotYetValid)
	}
	if p.now.After(date.Add(facts.Expires)) {
		return deny(ReasonExpired)
	}

	sent := params["X-Amz-Security-Token"]
	if facts.HasSecurityToken != (creds.SessionToken != "") ||
		subtle.ConstantTimeCompare([]byte(sent), []byte(creds.SessionToken)) != 1 {
		return deny(ReasonSecurityToken)
	}

	if !signatureMatches(ctx, hostPort, query, params["X-Amz-Signature"], facts.Region,
		creds, date) {
		return deny(ReasonBadSignature)
	}
	return facts
}

// signatureMatches signs the token's own query again with the trusted
// secret key, at the token's date, and compares the signatures.
func signatureMatches(ctx context.Context, hostPort string, query url.Values, sig, region string,
	creds aws.Credentials, date time.Time) bool {
	unsigned := url.Values{}
	for k, v := range query {
		switch k {
		case "X-Amz-Signature", "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date",
			"X-Amz-SignedHeaders", "X-Amz-Security-Token":
			// The signer sets these itself from the credentials and the time.
		default:
			unsigned[k] = v
		}
	}
	signed, err := presign(ctx, hostPort, unsigned, region, creds, date)
	if err != nil {
		return false
	}
	u, err := url.Parse(signed)
	if err != nil {
		return false
	}
	want := u.Query().Get("X-Amz-Signature")
	return want != "" && hmac.Equal([]byte(want), []byte(sig))
}

func sameHostPort(a, b string) bool {
	ha, pa, errA := net.SplitHostPort(a)
	hb, pb, errB := net.SplitHostPort(b)
	return errA == nil && errB == nil && strings.EqualFold(ha, hb) && pa == pb
}
