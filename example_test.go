package rdsconn_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/rdsconn/rdsconn"
)

// Connect to Aurora MySQL with an IAM token: no password, no TLS settings.
func ExampleWithIAM() {
	cfg, err := mysql.ParseDSN("app@tcp(app.cluster-abc123.eu-west-1.rds.amazonaws.com)/shop")
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(rdsconn.New(cfg, rdsconn.WithIAM()))
	defer db.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		log.Fatal(err)
	}
}

// Take the user and password from a Secrets Manager secret that RDS rotates.
func ExampleWithSecret() {
	cfg := mysql.NewConfig()
	cfg.Addr = "db1.abc123.us-east-1.rds.amazonaws.com:3306"
	cfg.DBName = "shop"
	db := sql.OpenDB(rdsconn.New(cfg,
		rdsconn.WithSecret("arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/shop-AbCdEf"),
		rdsconn.WithLogger(slog.Default()),
	))
	defer db.Close()
}

// Open a database by driver name and DSN, for tools that take nothing else.
func Example_driverName() {
	db, err := sql.Open(rdsconn.DriverName,
		"app@tcp(db1.abc123.us-east-1.rds.amazonaws.com:3306)/shop?rds-iam=true")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
}

// Reach the database through a tunnel on localhost: the token and the TLS
// server name are for the RDS endpoint, the connection goes to the tunnel.
func ExampleWithIAMEndpoint() {
	cfg, err := mysql.ParseDSN("app@tcp(127.0.0.1:13306)/shop")
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(rdsconn.New(cfg,
		rdsconn.WithIAMEndpoint("db1.abc123.us-east-1.rds.amazonaws.com:3306")))
	defer db.Close()
}

func ExampleRegionFromHost() {
	for _, host := range []string{
		"db1.abc123.us-east-1.rds.amazonaws.com",
		"app.cluster-ro-abc123.eu-west-1.rds.amazonaws.com:3306",
		"db1.abc123.rds.cn-north-1.amazonaws.com.cn",
		"db.internal.example.com",
	} {
		region, ok := rdsconn.RegionFromHost(host)
		fmt.Println(region, ok)
	}
	// Output:
	// us-east-1 true
	// eu-west-1 true
	// cn-north-1 true
	//  false
}

// Every configuration problem comes back from Connect, before any dial.
func ExampleNew_configError() {
	cfg, _ := mysql.ParseDSN("app@tcp(db1.abc123.us-east-1.rds.amazonaws.com)/shop?tls=skip-verify")
	db := sql.OpenDB(rdsconn.New(cfg, rdsconn.WithIAM()))
	defer db.Close()
	err := db.Ping()
	fmt.Println(errors.Is(err, rdsconn.ErrConfig))
	what, advice, _ := strings.Cut(err.Error(), "; ")
	fmt.Println(what)
	fmt.Println(advice)
	// Output:
	// true
	// rdsconn: invalid configuration: IAM authentication needs verified TLS, but the DSN has tls=skip-verify
	// remove the tls parameter: auto TLS verifies RDS endpoints against the embedded Amazon RDS roots
}
