package rdsconn

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/go-sql-driver/mysql"
)

func init() {
	sql.Register(DriverName, Driver{})
}

var _ driver.DriverContext = Driver{}

// Driver is the database/sql driver registered as "rdsmysql". It takes
// go-sql-driver DSNs with rdsconn's own parameters, for programs that open
// a database by driver name and DSN:
//
//	sql.Open("rdsmysql", "app@tcp(db1.abc123.us-east-1.rds.amazonaws.com:3306)/shop?rds-iam=true")
//
// Prefer sql.OpenDB(rdsconn.New(cfg, ...)) where you can.
type Driver struct{}

// Open opens one connection for dsn. database/sql uses OpenConnector
// instead, which shares the password cache between connections.
func (d Driver) Open(dsn string) (driver.Conn, error) {
	c, err := d.OpenConnector(dsn)
	if err != nil {
		return nil, err
	}
	// database/sql gives Open no context; there is no caller's to pass on.
	return c.Connect(context.Background())
}

// OpenConnector parses dsn and returns a Connector for it.
func (Driver) OpenConnector(dsn string) (driver.Connector, error) {
	cfg, err := ParseDSN(dsn)
	if err != nil {
		return nil, err
	}
	return New(cfg), nil
}

// urlDSN matches DSNs written as URLs, which go-sql-driver does not take.
var urlDSN = regexp.MustCompile(`^(?i)(mysql|mysqlx|mariadb|aurora|rds|jdbc:mysql|tcp|https?)://`)

// ParseDSN parses a go-sql-driver DSN, such as
// "app@tcp(db1.abc123.us-east-1.rds.amazonaws.com:3306)/shop?rds-iam=true".
// The rds- parameters stay in the config's Params for New to apply. Errors
// never repeat the DSN, which may hold a password.
func ParseDSN(dsn string) (*mysql.Config, error) {
	if urlDSN.MatchString(dsn) {
		return nil, configError("the DSN is written as a URL; write it in go-sql-driver's form, " +
			"user@tcp(host:port)/dbname?param=value")
	}
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		hint := ""
		if strings.Contains(dsn, "rds-") {
			hint = " (a / in a parameter value, such as rds-secret=prod/app, must be written %2F)"
		}
		return nil, configError("parsing the DSN: %v%s", err, hint)
	}
	return cfg, nil
}

// takeDSNParams turns the rds- parameters in cfg.Params into options and
// removes them: go-sql-driver would send them to the server as session
// variables.
func takeDSNParams(cfg *mysql.Config) ([]Option, error) {
	keys := make([]string, 0, len(cfg.Params))
	for k := range cfg.Params {
		if strings.HasPrefix(strings.ToLower(k), "rds-") {
			if k != strings.ToLower(k) {
				return nil, configError("the DSN parameter %s must be written in lower case, "+
					"as %s", k, strings.ToLower(k))
			}
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)

	var opts []Option
	for _, k := range keys {
		v := cfg.Params[k]
		delete(cfg.Params, k)
		if strings.Contains(v, " ") && k != "rds-password-file" {
			return nil, configError("the DSN parameter %s has a space: go-sql-driver reads "+
				"a + as a space, so write + as %%2B (and / as %%2F)", k)
		}
		switch k {
		case "rds-iam", "rds-auto-tls":
			on, err := strconv.ParseBool(v)
			if err != nil {
				return nil, configError("the DSN parameter %s=%q is not a boolean; use true or false", k, v)
			}
			switch {
			case k == "rds-iam" && on:
				opts = append(opts, WithIAM())
			case k == "rds-auto-tls" && !on:
				opts = append(opts, WithoutAutoTLS())
			}
		case "rds-iam-endpoint":
			opts = append(opts, WithIAMEndpoint(v))
		case "rds-secret":
			opts = append(opts, WithSecret(v))
		case "rds-password-file":
			opts = append(opts, WithPasswordFile(v))
		case "rds-region":
			opts = append(opts, WithRegion(v))
		default:
			return nil, configError("unknown DSN parameter %s; rdsconn knows rds-iam, "+
				"rds-iam-endpoint, rds-secret, rds-password-file, rds-region and rds-auto-tls", k)
		}
	}
	return opts, nil
}

// String returns the driver's name.
func (Driver) String() string { return fmt.Sprintf("rdsconn %s driver", DriverName) }
