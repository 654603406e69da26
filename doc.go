// Package rdsconn gives database/sql programs transparent authentication to
// Amazon RDS and Aurora MySQL. It is a driver.Connector around
// github.com/go-sql-driver/mysql that supplies, at every new connection, a
// password from a cache: an RDS IAM authentication token or an AWS Secrets
// Manager secret (or a file, or a function of yours).
//
//	cfg, err := mysql.ParseDSN("app@tcp(db1.abc123.us-east-1.rds.amazonaws.com:3306)/shop")
//	if err != nil {
//		return err
//	}
//	db := sql.OpenDB(rdsconn.New(cfg, rdsconn.WithIAM()))
//
// # Passwords
//
// The password of each new connection comes from one source; giving two
// is a configuration error:
//
//  1. WithIAM or WithIAMEndpoint: an IAM token signed for the endpoint,
//     region and user with the AWS config's credentials. A token is reused
//     for at most 10 minutes, and never within a minute of the expiry of the
//     credentials that signed it.
//  2. WithSecret: the AWSCURRENT version of a Secrets Manager secret, JSON
//     with a "password" and, used when the DSN names no user, a "username".
//     Reused for up to an hour.
//  3. WithPasswordFile: the trimmed contents of a file, read again after a
//     minute.
//  4. WithPasswordFunc: your function, called again after five minutes.
//  5. Otherwise the DSN's own password, unchanged.
//
// Concurrent Connects share one fetch. A value is refreshed in the
// background before it expires, so callers do not wait for AWS while a
// value is good; when a refresh fails, the current value is kept until the
// server refuses it (a secret, file or function result is also kept while
// a refresh hangs; an IAM token never outlives its reuse window). When the
// server answers "access denied" (1045, 1698), rdsconn drops exactly the
// value that was refused, fetches a new one and tries once more. For a
// secret, when AWSCURRENT is still the refused version, the new one is the
// AWSPENDING version (single-user rotation changes the database before it
// moves AWSCURRENT); and when a newer AWSCURRENT is refused too, AWSPENDING
// gets one last try. It never loops.
//
// # Region
//
// The region for signing tokens and for Secrets Manager is the first of:
//
//  1. WithRegion (the rds-region DSN parameter);
//  2. for Secrets Manager only, the region in the secret's ARN;
//  3. the region in the RDS endpoint name (WithIAMEndpoint's, else the DSN
//     host's), see RegionFromHost;
//  4. the AWS config's region (WithAWSConfig, or AWS_REGION and the shared
//     config files);
//  5. EC2 instance metadata, asked at most once per Connector within about a
//     second, and not at all when AWS_EC2_METADATA_DISABLED=true.
//
// Otherwise Connect fails with a configuration error. The endpoint name
// comes before the machine's own region on purpose: a token must be signed
// for the database's region, and services often run elsewhere.
//
// # TLS
//
// For an RDS endpoint name, when neither the DSN (tls=...) nor the config
// (TLS, TLSConfig) asks for anything and WithoutAutoTLS is not given,
// rdsconn turns on TLS 1.2 or later, verified against the embedded Amazon
// RDS root certificates (see RootCAs) or WithRootCAs's pool. IAM always
// needs verified TLS: a token never travels in clear text.
//
// # Errors
//
// Configuration problems match ErrConfig and are found before anything is
// dialled. A password source that fails gives a *FetchError; a password
// refused even after a fresh fetch gives an *AccessDeniedError that lists
// the usual causes and unwraps to the server's *mysql.MySQLError. No error
// or log line ever holds a token, password or secret value.
//
// # DSN-only use
//
// The package registers the driver "rdsmysql", which takes go-sql-driver
// DSNs with the parameters rds-iam, rds-iam-endpoint, rds-secret,
// rds-password-file, rds-region and rds-auto-tls.
package rdsconn
