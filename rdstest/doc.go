// Package rdstest lets tests exercise RDS IAM authentication and AWS
// Secrets Manager code paths without AWS. Everything it starts listens on
// loopback only and is driven through the real clients: go-sql-driver/mysql
// for the database, the AWS SDK for Go v2 for the AWS APIs.
//
// Use it in your own CI to test a program built on rdsconn, or any program
// that logs in to RDS MySQL with IAM tokens: what happens when a token
// expires, when credentials are rotated or revoked, when a secret is in the
// middle of a rotation, when AWS throttles or the instance metadata service
// does not answer.
//
// # The IAM endpoint
//
// NewIAMEndpoint starts a MySQL server that poses as an RDS instance
// (DefaultEndpoint unless told otherwise). It presents a certificate from a
// throwaway CA for the RDS host name, switches the client to
// mysql_clear_password, and accepts the password only over TLS and only if
// it is a valid IAM token: signed with SigV4 for rds-db, for the endpoint's
// host, port and region, for the user logging in, by credentials the
// endpoint trusts, and within 15 minutes of its date on the endpoint's own
// clock. Refusals are MySQL error 1045, counted by Reason:
//
//	ep, err := rdstest.NewIAMEndpoint(rdstest.IAMOptions{
//		Users:       []string{"app"},
//		Credentials: []aws.Credentials{creds},
//	})
//	...
//	cfg := mysql.NewConfig()
//	cfg.User, cfg.Passwd, cfg.Addr = "app", token, ep.Endpoint()
//	cfg.TLS, cfg.DialFunc = ep.ClientTLSConfig(), ep.DialContext
//	cfg.AllowCleartextPasswords = true
//	...
//	ep.Advance(16 * time.Minute)
//	// the next login with the same token is refused:
//	// ep.Stats().Denied[rdstest.ReasonExpired] == 1
//
// TokenAt builds a token as auth.BuildAuthToken does, at a chosen time.
// FailLogins injects MySQL errors or dropped connections; SetCredentials,
// RevokeCredentials and RemoveUser change what the endpoint trusts while it
// runs. Stats never holds a token, only its TokenFacts.
//
// # The password endpoint
//
// NewPasswordEndpoint starts a MySQL server that checks user names and
// passwords with mysql_native_password, for code that logs in with a
// password from AWS Secrets Manager. SetPassword changes a password as a
// rotation's ALTER USER does: from then on the old one is refused with
// error 1045, which is what a program meets in the middle of a rotation.
// With RequireTLS it also refuses logins without TLS, as
// require_secure_transport=ON does. Stats counts logins and refusals by
// Reason and never holds a password. Both endpoints share Addr, Endpoint,
// CA, ClientTLSConfig, DialContext, FailLogins and Close, and answer the
// same queries.
//
// # AWS fakes
//
// NewSecretsManager serves GetSecretValue with versions and the AWSCURRENT,
// AWSPENDING and AWSPREVIOUS labels; PutPending and Promote play a
// rotation, FailNext injects throttling, server errors, decryption failures,
// malformed answers or stalls. Its AWSConfig method gives an aws.Config for
// secretsmanager.NewFromConfig.
//
// NewInstanceMetadata serves the IMDSv2 token and the region and identity
// document, with faults on either step and a mode that never answers. Point
// imds.Options.Endpoint or AWS_EC2_METADATA_SERVICE_ENDPOINT at its URL.
// RefusingAddr and NewSilentListener give addresses that refuse or never
// answer a connection.
//
// # Limits
//
// The endpoints answer only a handful of queries (SELECT 1,
// CURRENT_USER(), VERSION(), @@version, @@max_allowed_packet, SHOW STATUS
// LIKE 'Ssl_version' or 'Ssl_cipher', SET, transactions and ping); they
// have no tables. They report Ssl_cipher with Go's IANA suite names, where
// MySQL shows OpenSSL's names for TLS 1.2 suites. The password endpoint
// speaks only mysql_native_password, not caching_sha2_password (MySQL 8.4's
// default), and keeps one password a user, not MySQL's dual passwords. The
// Secrets Manager fake serves only GetSecretValue, and only string secrets.
package rdstest
