package rdsconn

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
)

// partitionSuffixes are the DNS suffixes under which RDS endpoint names live,
// one per AWS partition (commercial, China, GovCloud shares the commercial
// one, the ISO partitions and the European Sovereign Cloud).
var partitionSuffixes = []string{
	"amazonaws.com",
	"amazonaws.com.cn",
	"c2s.ic.gov",
	"sc2s.sgov.gov",
	"cloud.adc-e.uk",
	"csp.hci.ic.gov",
	"amazonaws.eu",
}

// imdsTimeout bounds the whole instance-metadata region probe.
const imdsTimeout = time.Second

// Kinds of RDS endpoint, as endpointKind reports them.
const (
	kindInstance = "instance"
	kindCluster  = "cluster"
	kindReader   = "cluster reader"
	kindCustom   = "cluster custom"
	kindProxy    = "proxy"
	kindShard    = "limitless shard group"
	kindGlobal   = "global database writer"
)

// RegionFromHost returns the AWS region named in an RDS or Aurora endpoint
// name, such as "us-east-1" for "db1.abc123.us-east-1.rds.amazonaws.com".
// It knows instance, cluster, reader, custom, proxy and Limitless endpoints
// in every partition, ignores case, a trailing dot and a ":port", and
// reports false for anything else: IP addresses, "localhost", CNAMEs and
// look-alikes such as "x.rds.amazonaws.com.attacker.example".
func RegionFromHost(host string) (region string, ok bool) {
	region, _, ok = parseEndpoint(host)
	return region, ok
}

// parseEndpoint splits an RDS endpoint name into its region and kind.
func parseEndpoint(host string) (region, kind string, ok bool) {
	host = canonicalHost(host)
	if net.ParseIP(host) != nil {
		return "", "", false
	}
	var rest string
	for _, suffix := range partitionSuffixes {
		if r, found := strings.CutSuffix(host, "."+suffix); found {
			rest = r
			break
		}
	}
	if rest == "" {
		return "", "", false
	}

	// What is left is "<name>.<id>.<region>.rds" or "<name>.<id>.rds.<region>"
	// (the older China form), with "rds-fips" in FIPS names.
	labels := strings.Split(rest, ".")
	n := len(labels)
	if n < 4 {
		return "", "", false
	}
	switch {
	case isRDSLabel(labels[n-1]) && isRegion(labels[n-2]):
		region = labels[n-2]
	case isRDSLabel(labels[n-2]) && isRegion(labels[n-1]):
		region = labels[n-1]
	default:
		return "", "", false
	}
	if !isHostName(host) {
		return "", "", false
	}
	return region, endpointKind(labels[n-3]), true
}

// isGlobalEndpoint reports whether host is an Aurora global database writer
// endpoint, "<name>.global-<id>.global.rds.amazonaws.com", which names no
// region: the region then comes from the options, the AWS config or the
// instance.
func isGlobalEndpoint(host string) bool {
	host = canonicalHost(host)
	rest, ok := strings.CutSuffix(host, ".global.rds.amazonaws.com")
	labels := strings.Split(rest, ".")
	return ok && isHostName(host) && len(labels) == 2 && strings.HasPrefix(labels[1], "global-")
}

// isHostName reports whether host is a DNS name: dot-separated labels of
// letters, digits, hyphens and underscores, none empty or over 63 bytes.
func isHostName(host string) bool {
	if host == "" || len(host) > 253 {
		return false
	}
	for _, l := range strings.Split(strings.TrimSuffix(host, "."), ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
				r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// canonicalHost lower-cases a host name and drops a trailing dot and port.
func canonicalHost(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(host, ".")
	return strings.ToLower(host)
}

func isRDSLabel(l string) bool { return l == "rds" || l == "rds-fips" }

// isRegion reports whether l is shaped like an AWS region name: two to four
// letters, one or more words, and a number, such as "us-gov-west-1" or
// "eusc-de-east-1".
func isRegion(l string) bool {
	parts := strings.Split(l, "-")
	if len(parts) < 3 || len(parts[0]) < 2 || len(parts[0]) > 4 {
		return false
	}
	for i, p := range parts {
		if p == "" {
			return false
		}
		last := i == len(parts)-1
		for _, r := range p {
			if last && (r < '0' || r > '9') || !last && (r < 'a' || r > 'z') {
				return false
			}
		}
	}
	return true
}

// endpointKind tells the kind of endpoint from the label that carries the
// cluster or proxy identifier.
func endpointKind(idLabel string) string {
	switch {
	case strings.HasPrefix(idLabel, "cluster-ro-"):
		return kindReader
	case strings.HasPrefix(idLabel, "cluster-custom-"):
		return kindCustom
	case strings.HasPrefix(idLabel, "cluster-"):
		return kindCluster
	case strings.HasPrefix(idLabel, "proxy-"):
		return kindProxy
	case strings.HasPrefix(idLabel, "shardgrp-"):
		return kindShard
	default:
		return kindInstance
	}
}

// regionSource records a region and where it came from, for logs.
type regionSource struct {
	region string
	from   string
}

// regionFinder resolves the region in the documented order. The
// instance-metadata probe runs at most once per connector.
type regionFinder struct {
	option   string // WithRegion
	endpoint string // host of the RDS endpoint (WithIAMEndpoint or the DSN)

	mu       ctxMutex // guards the probe's outcome
	probed   bool
	probe    regionSource
	probeErr error
}

// find returns the region for the endpoint, or for the Secrets Manager
// client when arnRegion is not empty.
func (f *regionFinder) find(ctx context.Context, cfg aws.Config,
	arnRegion string) (regionSource, error) {
	if f.option != "" {
		return regionSource{f.option, "WithRegion"}, nil
	}
	if arnRegion != "" {
		return regionSource{arnRegion, "the secret's ARN"}, nil
	}
	if r, ok := RegionFromHost(f.endpoint); ok {
		return regionSource{r, "the endpoint name " + canonicalHost(f.endpoint)}, nil
	}
	if cfg.Region != "" {
		return regionSource{cfg.Region, "the AWS config"}, nil
	}
	return f.fromInstanceMetadata(ctx, cfg)
}

// fromInstanceMetadata asks EC2 instance metadata for the region, once per
// connector, within imdsTimeout and without retries. A probe cut short by
// the caller's context is not remembered, so a later caller may probe again.
func (f *regionFinder) fromInstanceMetadata(ctx context.Context,
	cfg aws.Config) (regionSource, error) {
	if err := f.mu.lock(ctx); err != nil {
		return regionSource{}, err
	}
	defer f.mu.unlock()
	if f.probed {
		return f.probe, f.probeErr
	}

	noRegion := func(cause error) error {
		return configError("no AWS region found: the endpoint %q is not an RDS name, the AWS "+
			"config has no region, and EC2 instance metadata gave none (%v); use WithRegion, "+
			"the rds-region DSN parameter, or set AWS_REGION", f.endpoint, cause)
	}
	if strings.EqualFold(os.Getenv("AWS_EC2_METADATA_DISABLED"), "true") {
		f.probed, f.probeErr = true, noRegion(fmt.Errorf("AWS_EC2_METADATA_DISABLED is true"))
		return f.probe, f.probeErr
	}

	pctx, cancel := context.WithTimeout(ctx, imdsTimeout)
	defer cancel()
	client := imds.NewFromConfig(cfg, func(o *imds.Options) {
		o.Retryer = aws.NopRetryer{}
		o.EnableFallback = aws.FalseTernary
	})
	out, err := client.GetRegion(pctx, &imds.GetRegionInput{})
	if ctx.Err() != nil {
		return regionSource{}, fmt.Errorf(
			"rdsconn: looking up the region in EC2 instance metadata: %w", ctx.Err())
	}
	f.probed = true
	if err != nil || out.Region == "" {
		if err == nil {
			err = fmt.Errorf("empty answer")
		}
		f.probeErr = noRegion(err)
		return f.probe, f.probeErr
	}
	f.probe = regionSource{out.Region, "EC2 instance metadata"}
	return f.probe, nil
}
