package rdstest_test

import (
	"context"
	"crypto/tls"
	"database/sql"
	"fmt"
	"log"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/rds/auth"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/go-sql-driver/mysql"

	"github.com/rdsconn/rdsconn/rdstest"
)

// A test logs in to the IAM endpoint with a token from the SDK, exactly as
// a program logs in to RDS, and then sees the same token refused once the
// endpoint's clock has moved past its 15 minutes.
func ExampleNewIAMEndpoint() {
	ctx := context.Background()
	keys := aws.Credentials{AccessKeyID: "AKIDEXAMPLE000000001", SecretAccessKey: "example-secret"}
	ep, err := rdstest.NewIAMEndpoint(rdstest.IAMOptions{
		Endpoint:    "db1.abc123.us-east-1.rds.amazonaws.com:3306",
		Region:      "us-east-1",
		Users:       []string{"app"},
		Credentials: []aws.Credentials{keys},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer ep.Close()

	creds := credentials.StaticCredentialsProvider{Value: keys}
	token, err := auth.BuildAuthToken(ctx, ep.Endpoint(), ep.Region(), "app", creds)
	if err != nil {
		log.Fatal(err)
	}
	cfg := mysql.NewConfig()
	cfg.User, cfg.Passwd = "app", token
	cfg.Net, cfg.Addr = "tcp", ep.Endpoint()
	cfg.TLS = &tls.Config{RootCAs: ep.CA().Pool(), ServerName: ep.Hostname()}
	cfg.AllowCleartextPasswords = true
	// Keep the RDS name in the configuration and reach the endpoint on loopback.
	cfg.DialFunc = ep.DialContext
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(connector)
	defer db.Close()

	var user string
	if err := db.QueryRowContext(ctx, "SELECT CURRENT_USER()").Scan(&user); err != nil {
		log.Fatal(err)
	}
	fmt.Println("logged in as", user)

	db.SetMaxIdleConns(0) // make the next query open a new connection
	ep.Advance(16 * time.Minute)
	err = db.PingContext(ctx)
	fmt.Println(err)
	fmt.Println("refused as", ep.Stats().Denied)
	// Output:
	// logged in as app@%
	// Error 1045 (28000): Access denied for user 'app'@'127.0.0.1' (using password: YES)
	// refused as map[expired:1]
}

// A test plays a password rotation in the Secrets Manager fake and reads
// the secret through the real SDK client.
func ExampleSecretsManager() {
	sm := rdstest.NewSecretsManager("eu-west-1")
	defer sm.Close()
	sm.PutSecret("prod/db", `{"username":"app","password":"old"}`)
	pending, err := sm.PutPending("prod/db", `{"username":"app","password":"new"}`)
	if err != nil {
		log.Fatal(err)
	}

	client := secretsmanager.NewFromConfig(sm.AWSConfig())
	get := func(stage string) string {
		out, err := client.GetSecretValue(context.Background(), &secretsmanager.GetSecretValueInput{
			SecretId:     aws.String(sm.ARN("prod/db")),
			VersionStage: aws.String(stage),
		})
		if err != nil {
			log.Fatal(err)
		}
		return aws.ToString(out.SecretString)
	}
	fmt.Println("current:", get(rdstest.StageCurrent))
	fmt.Println("pending:", get(rdstest.StagePending))

	if err := sm.Promote("prod/db", pending); err != nil {
		log.Fatal(err)
	}
	fmt.Println("current after rotation:", get(rdstest.StageCurrent))
	fmt.Println("calls:", sm.Stats().GetSecretValue)
	// Output:
	// current: {"username":"app","password":"old"}
	// pending: {"username":"app","password":"new"}
	// current after rotation: {"username":"app","password":"new"}
	// calls: 3
}
