package rdstest_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/go-sql-driver/mysql"

	"github.com/rdsconn/rdsconn"
	"github.com/rdsconn/rdsconn/rdstest"
)

// These three are the snippets of README-section.md ("Testing your code
// without AWS"): what a program built on rdsconn writes to test its IAM
// path, a secret rotation, and a region found in instance metadata.

// A test of a program that logs in with IAM: rdsconn builds a token with
// the test's keys, the endpoint checks it as RDS would, and revoking the
// keys shows the program's handling of access denied.
func ExampleNewIAMEndpoint_rdsconn() {
	keys := aws.Credentials{AccessKeyID: "AKIDEXAMPLE000000001", SecretAccessKey: "example"}
	ep, err := rdstest.NewIAMEndpoint(rdstest.IAMOptions{
		Users:       []string{"app"},
		Credentials: []aws.Credentials{keys},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer ep.Close()

	cfg := mysql.NewConfig()
	cfg.User, cfg.Net, cfg.Addr = "app", "tcp", ep.Endpoint()
	cfg.DialFunc = ep.DialContext // the RDS name stays, the dial goes to loopback
	db := sql.OpenDB(rdsconn.New(cfg, rdsconn.WithIAM(),
		rdsconn.WithAWSConfig(aws.Config{Credentials: credentials.StaticCredentialsProvider{
			Value: keys}}),
		rdsconn.WithRootCAs(ep.CA().Pool())))
	defer db.Close()
	db.SetMaxIdleConns(0) // every query logs in anew

	var user string
	err = db.QueryRow("SELECT CURRENT_USER()").Scan(&user)
	fmt.Println("logged in as", user, err)

	ep.RevokeCredentials(keys.AccessKeyID)
	var denied *rdsconn.AccessDeniedError
	err = db.Ping()
	fmt.Println("access denied:", errors.As(err, &denied), ep.Stats().Denied)
	// Output:
	// logged in as app@% <nil>
	// access denied: true map[unknown-key:2]
}

// A test of a secret rotation as Secrets Manager plays it for a single
// user: the new password is staged as AWSPENDING, the database changed,
// then AWSCURRENT moved. rdsconn meets 1045 with the old password and logs
// in with the pending one, and no query fails.
func ExampleNewPasswordEndpoint() {
	ep, err := rdstest.NewPasswordEndpoint(rdstest.PasswordOptions{
		Users: map[string]string{"app": "old-password"},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer ep.Close()
	sm := rdstest.NewSecretsManager("us-east-1")
	defer sm.Close()
	sm.PutSecret("prod/app", `{"username":"app","password":"old-password"}`)

	cfg := mysql.NewConfig()
	cfg.Net, cfg.Addr = "tcp", ep.Endpoint()
	cfg.DialFunc = ep.DialContext
	db := sql.OpenDB(rdsconn.New(cfg, rdsconn.WithSecret("prod/app"),
		rdsconn.WithAWSConfig(sm.AWSConfig()), rdsconn.WithRootCAs(ep.CA().Pool())))
	defer db.Close()
	db.SetMaxIdleConns(0)
	query := func(when string) {
		var user string
		err := db.QueryRow("SELECT CURRENT_USER()").Scan(&user)
		fmt.Println(when, user, err)
	}

	query("before:")
	pending, err := sm.PutPending("prod/app", `{"username":"app","password":"new-password"}`)
	if err != nil {
		log.Fatal(err)
	}
	ep.SetPassword("app", "new-password")
	query("during:")
	if err := sm.Promote("prod/app", pending); err != nil {
		log.Fatal(err)
	}
	query("after:")
	st := ep.Stats()
	fmt.Println("logins:", st.Accepted, "refused:", st.Denied)
	// Output:
	// before: app@% <nil>
	// during: app@% <nil>
	// after: app@% <nil>
	// logins: 3 refused: map[wrong-password:1]
}

// A test of a program on EC2 that reaches the database by a name of its
// own: the region for the token comes from instance metadata.
func TestRegionFromInstanceMetadata(t *testing.T) {
	md := rdstest.NewInstanceMetadata("eu-west-1")
	t.Cleanup(md.Close)
	t.Setenv("AWS_EC2_METADATA_DISABLED", "false")
	t.Setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", md.URL())

	keys := aws.Credentials{AccessKeyID: "AKIDEXAMPLE000000001", SecretAccessKey: "example"}
	ep, err := rdstest.NewIAMEndpoint(rdstest.IAMOptions{
		Endpoint:    "mysql.internal.example.com:3306", // not an RDS name: no region in it
		Region:      "eu-west-1",
		Users:       []string{"app"},
		Credentials: []aws.Credentials{keys},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ep.Close() })

	cfg := mysql.NewConfig()
	cfg.User, cfg.Net, cfg.Addr = "app", "tcp", ep.Endpoint()
	cfg.DialFunc, cfg.TLS = ep.DialContext, ep.ClientTLSConfig()
	connector := rdsconn.New(cfg, rdsconn.WithIAM(),
		rdsconn.WithAWSConfig(aws.Config{Credentials: credentials.StaticCredentialsProvider{
			Value: keys}})) // no region in the AWS config either
	t.Cleanup(func() { connector.Close() })

	if err := sql.OpenDB(connector).PingContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := md.Stats(); st.Reads == 0 || ep.Stats().Tokens[0].Region != "eu-west-1" {
		t.Errorf("token region %q, metadata stats %+v", ep.Stats().Tokens[0].Region, st)
	}
}
