package rdsconn

// The benchmarks of BENCHMARKS.md: what rdsconn costs per Connect and in AWS
// calls, side by side with the plain driver and the per-connection recipes.
// scripts/bench runs them against rdstest's endpoint and MariaDB, with the
// Connect contenders interleaved; see BENCHMARKS.md for how to read them.

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"database/sql/driver"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/rds/auth"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/go-sql-driver/mysql"
	"github.com/rdsconn/rdsconn/internal/mariadbtest"
	"github.com/rdsconn/rdsconn/rdstest"
)

const (
	benchUser   = "app"
	benchSecret = "bench/app"
	benchDB     = "shop"
	// sessionCacheEntries is the size of the session cache given to the
	// plain driver for the fair comparison: the same as auto TLS's.
	sessionCacheEntries = sessionCacheSize
)

var benchCreds = aws.Credentials{AccessKeyID: "AKIDBENCH00000000001",
	SecretAccessKey: "bench-secret-access-key", Source: "bench"}

// target is one server that every contender logs in to, and what each
// contender needs to do so.
type target struct {
	addr      string // the RDS host:port in every config; dial maps it to the server
	host      string
	dial      func(ctx context.Context, network, addr string) (net.Conn, error)
	roots     *x509.CertPool
	user      string
	password  string // the static password of the plain driver
	cleartext bool   // the server asks for mysql_clear_password
	iam       bool   // the server checks IAM tokens
	sm        *rdstest.SecretsManager
}

// newEndpointTarget starts rdstest's IAM endpoint with a server key of the
// given type. Its static password, and the password in its secret, is a
// token signed now: the endpoint accepts it for 15 minutes, which is how
// the secret contenders can log in to the same server as the IAM ones.
func newEndpointTarget(tb testing.TB, key rdstest.KeyType) *target {
	tb.Helper()
	tb.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	ep, err := rdstest.NewIAMEndpoint(rdstest.IAMOptions{
		Users:       []string{benchUser},
		Credentials: []aws.Credentials{benchCreds},
		KeyType:     key,
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ep.Close() })

	token, err := auth.BuildAuthToken(context.Background(), ep.Endpoint(), ep.Region(),
		benchUser, credentials.StaticCredentialsProvider{Value: benchCreds})
	if err != nil {
		tb.Fatal(err)
	}
	t := &target{addr: ep.Endpoint(), host: ep.Hostname(), dial: ep.DialContext,
		roots: ep.CA().Pool(), user: benchUser, password: token, cleartext: true, iam: true}
	t.sm = newBenchSecrets(tb, t.user, t.password)
	return t
}

// newMariaDBTarget makes a user with a random password on the MariaDB that
// scripts/test starts, and skips without one.
func newMariaDBTarget(tb testing.TB) *target {
	tb.Helper()
	info := mariadbtest.Server(tb)
	var b [12]byte
	rand.Read(b[:])
	password := hex.EncodeToString(b[:])
	user := info.CreateUser(tb, "bench", password)
	host, _, _ := net.SplitHostPort(mariadbtest.RDSEndpoint)
	t := &target{addr: mariadbtest.RDSEndpoint, host: host, dial: info.DialFunc(),
		roots: info.RootCAs, user: user, password: password}
	t.sm = newBenchSecrets(tb, user, password)
	return t
}

func newBenchSecrets(tb testing.TB, user, password string) *rdstest.SecretsManager {
	tb.Helper()
	value, err := json.Marshal(map[string]string{"username": user, "password": password})
	if err != nil {
		tb.Fatal(err)
	}
	sm := rdstest.NewSecretsManager("us-east-1")
	tb.Cleanup(sm.Close)
	sm.PutSecret(benchSecret, string(value))
	return sm
}

// userTLS is the TLS config a user writes for the server: its roots and
// its name, and a session cache only when asked.
func (t *target) userTLS(sessionCache bool) *tls.Config {
	c := &tls.Config{RootCAs: t.roots, ServerName: t.host, MinVersion: tls.VersionTLS12}
	if sessionCache {
		c.ClientSessionCache = tls.NewLRUClientSessionCache(sessionCacheEntries)
	}
	return c
}

// config is the config a user writes, from mysql.NewConfig's defaults,
// without a password and without TLS.
func (t *target) config() *mysql.Config {
	cfg := mysql.NewConfig()
	cfg.Net = "tcp"
	cfg.Addr = t.addr
	cfg.User = t.user
	cfg.DBName = benchDB
	cfg.AllowCleartextPasswords = t.cleartext
	cfg.DialFunc = t.dial
	return cfg
}

// tlsWatch counts handshakes and resumed sessions, and notes the key type
// of the server certificate.
type tlsWatch struct {
	handshakes atomic.Int64
	resumed    atomic.Int64
	key        atomic.Value // string
}

func (w *tlsWatch) attach(c *tls.Config) {
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		w.handshakes.Add(1)
		if cs.DidResume {
			w.resumed.Add(1)
		}
		if len(cs.PeerCertificates) > 0 {
			w.key.Store(keyName(cs.PeerCertificates[0]))
		}
		return nil
	}
}

func keyName(cert *x509.Certificate) string {
	if k, ok := cert.PublicKey.(*rsa.PublicKey); ok {
		return fmt.Sprintf("rsa%d", k.N.BitLen())
	}
	return "ecdsa"
}

// calls counts what a contender asked of AWS. When holdFor is set, every
// token build and Secrets Manager call waits until that many callers have
// entered Connect, so that a burst is sure to overlap the fetch.
type calls struct {
	builds  atomic.Int64 // IAM tokens built
	entered atomic.Int64 // callers about to call Connect
	holdFor int64
}

func (n *calls) hold() {
	if n.holdFor == 0 {
		return
	}
	for deadline := time.Now().Add(30 * time.Second); n.entered.Load() < n.holdFor &&
		time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // from entering Connect into the cache
}

// heldHTTPClient holds every AWS call with calls.hold.
type heldHTTPClient struct {
	aws.HTTPClient
	n *calls
}

func (c heldHTTPClient) Do(r *http.Request) (*http.Response, error) {
	c.n.hold()
	return c.HTTPClient.Do(r)
}

// makeFunc makes a connector for t the way one kind of user would, watches
// its TLS config with w and counts its AWS calls in n.
type makeFunc func(tb testing.TB, t *target, w *tlsWatch, n *calls) driver.Connector

// contender is one way to connect.
type contender struct {
	name      string
	iam       bool // needs a server that checks IAM tokens
	connector makeFunc
}

var contenders = []contender{
	{name: "plain", connector: makePlain(false)},
	{name: "plain-sessioncache", connector: makePlain(true)},
	{name: "rdsconn-iam", iam: true, connector: makeRdsconnIAM(true)},
	{name: "rdsconn-iam-nosessioncache", iam: true, connector: makeRdsconnIAM(false)},
	{name: "recipe-iam", iam: true, connector: makeRecipeIAM},
	{name: "rdsconn-secret", connector: makeRdsconnSecret(true)},
	{name: "rdsconn-secret-nosessioncache", connector: makeRdsconnSecret(false)},
	{name: "recipe-secret", connector: makeRecipeSecret},
}

func contenderNamed(name string) contender {
	for _, c := range contenders {
		if c.name == name {
			return c
		}
	}
	panic("no contender " + name)
}

// makePlain is go-sql-driver with a static password.
func makePlain(sessionCache bool) makeFunc {
	return func(tb testing.TB, t *target, w *tlsWatch, _ *calls) driver.Connector {
		cfg := t.config()
		cfg.Passwd = t.password
		cfg.TLS = t.userTLS(sessionCache)
		w.attach(cfg.TLS)
		c, err := mysql.NewConnector(cfg)
		if err != nil {
			tb.Fatal(err)
		}
		return c
	}
}

// makeRdsconnIAM is rdsconn with WithIAM: auto TLS, or the user's TLS config
// without a session cache.
func makeRdsconnIAM(autoTLS bool) makeFunc {
	return func(tb testing.TB, t *target, w *tlsWatch, n *calls) driver.Connector {
		cfg := t.config()
		if !autoTLS {
			cfg.TLS = t.userTLS(false)
		}
		return newWatched(tb, cfg, w, WithIAM(), WithRootCAs(t.roots),
			WithAWSConfig(aws.Config{Credentials: credentials.StaticCredentialsProvider{
				Value: benchCreds}}),
			withTokenBuilder(countingBuilder(n)))
	}
}

// makeRdsconnSecret is rdsconn with WithSecret.
func makeRdsconnSecret(autoTLS bool) makeFunc {
	return func(tb testing.TB, t *target, w *tlsWatch, n *calls) driver.Connector {
		cfg := t.config()
		if !autoTLS {
			cfg.TLS = t.userTLS(false)
		}
		awsCfg := t.sm.AWSConfig()
		awsCfg.HTTPClient = heldHTTPClient{awsCfg.HTTPClient, n}
		return newWatched(tb, cfg, w, WithSecret(benchSecret), WithRootCAs(t.roots),
			WithAWSConfig(awsCfg))
	}
}

// newWatched makes a Connector and watches the TLS config it will use.
func newWatched(tb testing.TB, cfg *mysql.Config, w *tlsWatch, opts ...Option) *Connector {
	c := New(cfg, opts...)
	if c.err != nil {
		tb.Fatal(c.err)
	}
	w.attach(c.base.TLS) // before the first Connect clones it
	tb.Cleanup(func() { c.Close() })
	return c
}

func countingBuilder(n *calls) tokenBuilder {
	return func(ctx context.Context, endpoint, region, user string,
		creds aws.CredentialsProvider) (string, error) {
		n.builds.Add(1)
		n.hold()
		return buildAuthToken(ctx, endpoint, region, user, creds)
	}
}

// makeRecipeIAM is the common recipe: go-sql-driver's BeforeConnect builds
// a fresh token for every connection.
func makeRecipeIAM(tb testing.TB, t *target, w *tlsWatch, n *calls) driver.Connector {
	cfg := t.config()
	cfg.TLS = t.userTLS(false)
	w.attach(cfg.TLS)
	region := "us-east-1"
	creds := credentials.StaticCredentialsProvider{Value: benchCreds}
	err := cfg.Apply(mysql.BeforeConnect(func(ctx context.Context, c *mysql.Config) error {
		n.builds.Add(1)
		token, err := auth.BuildAuthToken(ctx, t.addr, region, c.User, creds)
		c.Passwd = token
		return err
	}))
	if err != nil {
		tb.Fatal(err)
	}
	c, err := mysql.NewConnector(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// makeRecipeSecret fetches the secret in BeforeConnect for every connection.
func makeRecipeSecret(tb testing.TB, t *target, w *tlsWatch, _ *calls) driver.Connector {
	cfg := t.config()
	cfg.TLS = t.userTLS(false)
	w.attach(cfg.TLS)
	client := secretsmanager.NewFromConfig(t.sm.AWSConfig())
	err := cfg.Apply(mysql.BeforeConnect(func(ctx context.Context, c *mysql.Config) error {
		out, err := client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{
			SecretId: aws.String(benchSecret)})
		if err != nil {
			return err
		}
		var v struct{ Password string }
		if err := json.Unmarshal([]byte(aws.ToString(out.SecretString)), &v); err != nil {
			return err
		}
		c.Passwd = v.Password
		return nil
	}))
	if err != nil {
		tb.Fatal(err)
	}
	c, err := mysql.NewConnector(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func connectClose(tb testing.TB, ctx context.Context, c driver.Connector) {
	conn, err := c.Connect(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	conn.Close()
}

// BenchmarkConnect opens and closes one connection per op, for each
// contender on each server: rdstest's endpoint with an ECDSA and an RSA-2048
// key, and MariaDB with the key of its certificate. One process gives one
// sample; scripts/bench interleaves the contenders over many processes.
func BenchmarkConnect(b *testing.B) {
	b.Run("server=rdstest", func(b *testing.B) {
		for _, key := range []struct {
			name string
			typ  rdstest.KeyType
		}{{"ecdsa", rdstest.ECDSAP256}, {"rsa2048", rdstest.RSA2048}} {
			b.Run("key="+key.name, func(b *testing.B) {
				t := newEndpointTarget(b, key.typ)
				for _, c := range contenders {
					b.Run("via="+c.name, func(b *testing.B) { benchConnect(b, t, c) })
				}
			})
		}
	})
	b.Run("server=mariadb", func(b *testing.B) {
		t := newMariaDBTarget(b)
		var w tlsWatch
		connectClose(b, context.Background(), makePlain(false)(b, t, &w, &calls{}))
		b.Run("key="+w.key.Load().(string), func(b *testing.B) {
			for _, c := range contenders {
				if !c.iam {
					b.Run("via="+c.name, func(b *testing.B) { benchConnect(b, t, c) })
				}
			}
		})
	})
}

func benchConnect(b *testing.B, t *target, c contender) {
	ctx := context.Background()
	var w tlsWatch
	var n calls
	conn := c.connector(b, t, &w, &n)
	for range 3 { // fill the password and session caches
		connectClose(b, ctx, conn)
	}
	w.handshakes.Store(0)
	w.resumed.Store(0)

	b.ReportAllocs()
	cpu := startCPU()
	for b.Loop() {
		connectClose(b, ctx, conn)
	}
	cpu.report(b, b.N)
	b.ReportMetric(float64(w.resumed.Load())/float64(w.handshakes.Load()), "resumed/op")
}

// cpuClock measures the CPU time of the whole process, client and
// in-process server, which other programs on the machine change far less
// than they change wall time.
type cpuClock struct {
	start time.Duration
	ok    bool
}

func startCPU() cpuClock {
	t, ok := cpuTime()
	return cpuClock{t, ok}
}

func (c cpuClock) report(b *testing.B, ops int) {
	if end, ok := cpuTime(); ok && c.ok {
		b.ReportMetric(float64((end-c.start).Nanoseconds())/float64(ops), "cpu-ns/op")
	}
}

// BenchmarkCachedPassword is the cache's fast path alone: what every
// Connect pays on top of go-sql-driver while the password is fresh.
func BenchmarkCachedPassword(b *testing.B) {
	c := newOfflineIAM(b)
	ctx := context.Background()
	if _, err := c.cache.get(ctx); err != nil {
		b.Fatal(err)
	}

	b.Run("callers=1", func(b *testing.B) {
		b.ReportAllocs()
		cpu := startCPU()
		for b.Loop() {
			if _, err := c.cache.get(ctx); err != nil {
				b.Fatal(err)
			}
		}
		cpu.report(b, b.N)
	})
	b.Run("clock-read-alone", func(b *testing.B) {
		// For reference: the clock read that the fast path makes.
		var now int64
		cpu := startCPU()
		for b.Loop() {
			now += c.cache.now().UnixNano()
		}
		cpu.report(b, b.N)
		if now == 0 {
			b.Fatal("no clock")
		}
	})
	b.Run("callers=parallel", func(b *testing.B) {
		b.ReportAllocs()
		cpu := startCPU()
		defer func() { cpu.report(b, b.N) }()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := c.cache.get(ctx); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// newOfflineIAM is an IAM connector that needs no server until it dials.
func newOfflineIAM(tb testing.TB, opts ...Option) *Connector {
	tb.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	cfg := mysql.NewConfig()
	cfg.User = benchUser
	cfg.Addr = rdstest.DefaultEndpoint
	all := append([]Option{WithIAM(), WithAWSConfig(aws.Config{
		Credentials: credentials.StaticCredentialsProvider{Value: benchCreds}})}, opts...)
	c := New(cfg, all...)
	if c.err != nil {
		tb.Fatal(c.err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// BenchmarkTokenBuild is what a password costs when it is not cached: the
// SDK's BuildAuthToken alone (what the recipe pays at every Connect),
// rdsconn's whole miss for a token (fetch, go-sql-driver connector, the
// shared-fetch machinery), and for a secret from the loopback fake.
func BenchmarkTokenBuild(b *testing.B) {
	ctx := context.Background()
	b.Run("via=BuildAuthToken", func(b *testing.B) {
		creds := credentials.StaticCredentialsProvider{Value: benchCreds}
		b.ReportAllocs()
		cpu := startCPU()
		for b.Loop() {
			if _, err := auth.BuildAuthToken(ctx, rdstest.DefaultEndpoint, "us-east-1",
				benchUser, creds); err != nil {
				b.Fatal(err)
			}
		}
		cpu.report(b, b.N)
	})
	miss := func(b *testing.B, c *Connector) {
		b.ReportAllocs()
		cpu := startCPU()
		for b.Loop() {
			if _, err := c.cache.get(ctx); err != nil {
				b.Fatal(err)
			}
			c.cache.forget()
		}
		cpu.report(b, b.N)
	}
	b.Run("via=rdsconn-iam-miss", func(b *testing.B) { miss(b, newOfflineIAM(b)) })
	b.Run("via=rdsconn-secret-miss", func(b *testing.B) {
		sm := newBenchSecrets(b, benchUser, "bench-password")
		cfg := mysql.NewConfig()
		cfg.Addr = rdstest.DefaultEndpoint
		c := New(cfg, WithSecret(benchSecret), WithAWSConfig(sm.AWSConfig()))
		if c.err != nil {
			b.Fatal(c.err)
		}
		b.Cleanup(func() { c.Close() })
		miss(b, c)
	})
}

// burst is n simultaneous Connects on a connector that has nothing cached.
type burst struct {
	elapsed time.Duration // from the start until the last Connect returned
	builds  int64
	secrets int   // GetSecretValue calls
	resumed int64 // connections that resumed a TLS session
}

// runBurst opens n connections at once with a new connector from c. With
// hold, the fetch waits until every caller has entered Connect.
func runBurst(tb testing.TB, t *target, c contender, n int, hold bool) burst {
	tb.Helper()
	var w tlsWatch
	var cl calls
	if hold {
		cl.holdFor = int64(n)
	}
	conn := c.connector(tb, t, &w, &cl)
	before := t.sm.Stats().GetSecretValue

	ctx := context.Background()
	start := make(chan struct{})
	conns := make([]driver.Conn, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			cl.entered.Add(1)
			conns[i], errs[i] = conn.Connect(ctx)
		})
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	r := burst{elapsed: time.Since(t0), builds: cl.builds.Load(),
		secrets: t.sm.Stats().GetSecretValue - before, resumed: w.resumed.Load()}

	for i, c := range conns {
		if errs[i] != nil {
			tb.Fatalf("Connect %d of %d: %v", i+1, n, errs[i])
		}
		c.Close()
	}
	if cl, ok := conn.(io.Closer); ok {
		cl.Close()
	}
	return r
}

// BenchmarkBurst opens 1, 10, 100 and 1,000 connections at once on a cold
// connector, against rdstest's endpoint with an RSA-2048 key, as RDS
// presents. Each op is one burst: ns/op is the time until all are connected,
// resumed/conn the share of connections that resumed a TLS session made by
// an earlier one of the same burst (only auto TLS has a session cache).
func BenchmarkBurst(b *testing.B) {
	t := newEndpointTarget(b, rdstest.RSA2048)
	for _, n := range []int{1, 10, 100, 1000} {
		for _, name := range []string{"plain", "rdsconn-iam", "recipe-iam", "rdsconn-secret",
			"recipe-secret"} {
			c := contenderNamed(name)
			b.Run(fmt.Sprintf("callers=%d/via=%s", n, name), func(b *testing.B) {
				var total burst
				cpu := startCPU()
				for b.Loop() {
					r := runBurst(b, t, c, n, false)
					total.elapsed += r.elapsed
					total.builds += r.builds
					total.secrets += r.secrets
					total.resumed += r.resumed
				}
				cpu.report(b, b.N)
				ops := float64(b.N)
				b.ReportMetric(float64(total.elapsed.Nanoseconds())/ops, "ns/op")
				b.ReportMetric(float64(total.elapsed.Nanoseconds())/ops/float64(n), "ns/caller")
				b.ReportMetric(float64(total.builds)/ops, "builds/op")
				b.ReportMetric(float64(total.secrets)/ops, "GetSecretValue/op")
				b.ReportMetric(float64(total.resumed)/ops/float64(n), "resumed/conn")
			})
		}
	}
}

// Expiry under load: workers connect without pause while the cached secret
// reaches its refresh time and its expiry. The connector's clock runs
// expirySpeed times faster than real time, so that the hour a secret is
// reused passes in 3 s; Secrets Manager answers in 50 ms of real time.
const (
	expirySpeed   = 1200
	expiryWorkers = 2 // one per core: more only queue behind each other
	expiryDelay   = 50 * time.Millisecond
	// expiryFetchWindow is the real time after the refresh time during which
	// the refresh is in flight: its 50 ms and some.
	expiryFetchWindow = 100 * time.Millisecond
)

// expiryRun is what one run saw. Steady is the time from a tenth of the
// hour until a minute before the refresh time; across is the same length of
// time from the refresh time on, past the old value's expiry.
type expiryRun struct {
	steady, across []time.Duration // Connect latencies
	fetching       []time.Duration // those of across in the first 100 ms, while the refresh runs
	gets           []time.Duration // the password lookups of a prober, across
	secrets        int
	ahead, late    int64 // refreshes started before and after the value expired
}

// fetchTimer tells, for every fetch that replaces a value, whether it
// started before that value's expiry (a refresh ahead, which nobody waits
// for) or at or after it (which callers may wait for).
type fetchTimer struct {
	source
	c           *cache
	ahead, late atomic.Int64
}

func (f *fetchTimer) fetch(ctx context.Context, now time.Time) (credential, error) {
	if e := f.c.cur.Load(); e != nil {
		if now.UnixNano() >= e.expires {
			f.late.Add(1)
		} else {
			f.ahead.Add(1)
		}
	}
	return f.source.fetch(ctx, now)
}

func runExpiry(tb testing.TB, t *target) expiryRun {
	tb.Helper()
	start := time.Now()
	scaled := func() time.Time { return start.Add(time.Since(start) * expirySpeed) }
	toReal := func(d time.Duration) time.Duration { return d / expirySpeed }

	var w tlsWatch
	c := newWatched(tb, t.config(), &w, WithSecret(benchSecret), WithRootCAs(t.roots),
		WithAWSConfig(t.sm.AWSConfig()), withClock(scaled))
	timer := &fetchTimer{source: c.cache.src, c: c.cache}
	c.cache.src = timer
	t.sm.SetDelay(expiryDelay)
	defer t.sm.SetDelay(0)
	before := t.sm.Stats().GetSecretValue
	ctx := context.Background()
	connectClose(tb, ctx, c) // the first fetch, at about start

	refresh := toReal(secretTTL * 4 / 5)
	steadyFrom, steadyTo := toReal(secretTTL/10), refresh-toReal(time.Minute)
	acrossTo := refresh + (steadyTo - steadyFrom)
	if acrossTo < toReal(secretTTL+5*time.Minute) {
		tb.Fatal("the across window ends before the old value's expiry")
	}

	type sample struct{ at, took time.Duration }
	results := make([][]sample, expiryWorkers+1)
	var wg sync.WaitGroup
	for i := range expiryWorkers {
		wg.Go(func() {
			for {
				t0 := time.Now()
				at := t0.Sub(start)
				if at >= acrossTo {
					return
				}
				connectClose(tb, ctx, c)
				results[i] = append(results[i], sample{at, time.Since(t0)})
			}
		})
	}
	// The prober times the password lookup alone, which is what waits for
	// Secrets Manager if anything does; the dial adds only noise to that.
	wg.Go(func() {
		for {
			t0 := time.Now()
			at := t0.Sub(start)
			if at >= acrossTo {
				return
			}
			if _, err := c.cache.get(ctx); err != nil {
				tb.Error(err)
				return
			}
			if at >= refresh {
				results[expiryWorkers] = append(results[expiryWorkers], sample{at, time.Since(t0)})
			}
			time.Sleep(100 * time.Microsecond)
		}
	})
	wg.Wait()

	r := expiryRun{secrets: t.sm.Stats().GetSecretValue - before, ahead: timer.ahead.Load(),
		late: timer.late.Load()}
	for _, s := range results[expiryWorkers] {
		r.gets = append(r.gets, s.took)
	}
	for _, rs := range results[:expiryWorkers] {
		for _, s := range rs {
			switch {
			case s.at >= steadyFrom && s.at < steadyTo:
				r.steady = append(r.steady, s.took)
			case s.at >= refresh && s.at < acrossTo:
				r.across = append(r.across, s.took)
				if s.at < refresh+expiryFetchWindow {
					r.fetching = append(r.fetching, s.took)
				}
			}
		}
	}
	return r
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// BenchmarkExpiry reports Connect latency percentiles in steady state and
// across the expiry of the cached secret, with Secrets Manager answering in
// 50 ms, against rdstest's endpoint with an RSA-2048 key. Each op is one
// run of about 4 s. p99-fetching-ms is the p99 of the Connects in the first
// 100 ms after the refresh time, while the refresh is in flight.
// refreshed-ahead/op and refreshed-late/op count the
// refreshes that started before and after the old value expired: only a
// late one can make callers wait. waited/op counts the password lookups
// across the expiry that took as long as a Secrets Manager call, whatever
// the cause (a wait, or a goroutine that was not scheduled).
func BenchmarkExpiry(b *testing.B) {
	t := newEndpointTarget(b, rdstest.RSA2048)
	var sum struct {
		p50s, p99s, p50a, p99a, ratio, getMax, waited, secrets, ahead, late, p99f float64
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	for b.Loop() {
		r := runExpiry(b, t)
		sum.p50s += ms(percentile(r.steady, 0.50))
		sum.p99s += ms(percentile(r.steady, 0.99))
		sum.p50a += ms(percentile(r.across, 0.50))
		sum.p99a += ms(percentile(r.across, 0.99))
		sum.p99f += ms(percentile(r.fetching, 0.99))
		sum.ratio += float64(percentile(r.across, 0.99)) / float64(percentile(r.steady, 0.99))
		sum.getMax += ms(slices.Max(r.gets))
		sum.secrets += float64(r.secrets)
		sum.ahead += float64(r.ahead)
		sum.late += float64(r.late)
		for _, d := range r.gets {
			if d >= expiryDelay {
				sum.waited++
			}
		}
	}
	n := float64(b.N)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(sum.p50s/n, "p50-steady-ms")
	b.ReportMetric(sum.p99s/n, "p99-steady-ms")
	b.ReportMetric(sum.p50a/n, "p50-across-ms")
	b.ReportMetric(sum.p99a/n, "p99-across-ms")
	b.ReportMetric(sum.p99f/n, "p99-fetching-ms")
	b.ReportMetric(sum.ratio/n, "p99-ratio")
	b.ReportMetric(sum.getMax/n, "lookup-max-ms")
	b.ReportMetric(sum.waited/n, "waited/op")
	b.ReportMetric(sum.secrets/n, "GetSecretValue/op")
	b.ReportMetric(sum.ahead/n, "refreshed-ahead/op")
	b.ReportMetric(sum.late/n, "refreshed-late/op")
}

// stubConnector stands in for go-sql-driver, to leave only rdsconn's own
// work in BenchmarkConnectOverhead.
type stubConnector struct{ conn driver.Conn }

func (s stubConnector) Connect(context.Context) (driver.Conn, error) { return s.conn, nil }
func (stubConnector) Driver() driver.Driver                          { return Driver{} }

// BenchmarkConnectOverhead is what rdsconn's Connect adds to go-sql-driver's
// while the password is cached: the go-sql-driver connector of the cached
// entry is replaced by a stub that returns at once.
func BenchmarkConnectOverhead(b *testing.B) {
	c := newOfflineIAM(b)
	ctx := context.Background()
	e, err := c.cache.get(ctx)
	if err != nil {
		b.Fatal(err)
	}
	e.conn = stubConnector{}

	b.ReportAllocs()
	cpu := startCPU()
	for b.Loop() {
		if _, err := c.Connect(ctx); err != nil {
			b.Fatal(err)
		}
	}
	cpu.report(b, b.N)
}
