package rdsconn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/arn"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
)

// secretTTL is how long a fetched secret is reused. A rotation is noticed
// sooner than that: the server refuses the old password, and the secret is
// fetched again at once.
const secretTTL = time.Hour

// pendingTTL is how long an AWSPENDING password that the server accepted is
// reused before AWSCURRENT is asked again: a rotation takes moments.
const pendingTTL = time.Minute

// Version stages that Secrets Manager rotation uses.
const (
	stageCurrent = "AWSCURRENT"
	stagePending = "AWSPENDING"
)

// secretSource fetches a database password from Secrets Manager.
type secretSource struct {
	id        string
	arnRegion string // region named in the ARN, if id is one
	aws       *awsState
	log       *slog.Logger

	mu     ctxMutex // guards client
	client *secretsmanager.Client
}

// parseSecretID checks a secret id and returns the region of an ARN.
func parseSecretID(id string) (region string, err error) {
	if id == "" {
		return "", configError("WithSecret was given an empty secret id; give the secret's name or ARN")
	}
	// Never quote an id that is not a name: it may be the secret's value,
	// put by mistake where its name belongs.
	if !strings.HasPrefix(id, "arn:") {
		if !isSecretName(id) {
			return "", configError("WithSecret (rds-secret) was given something that is not a " +
				"secret name or ARN (names hold letters, digits and /_+=.@-); was it the " +
				"secret's value? Give the name or ARN")
		}
		return "", nil
	}
	a, err := arn.Parse(id)
	name, isSecret := strings.CutPrefix(a.Resource, "secret:")
	if err != nil || a.Service != "secretsmanager" || !isRegion(a.Region) || !isSecret ||
		!isSecretName(name) {
		if !isSecretName(strings.ReplaceAll(id, ":", "")) {
			return "", configError("the secret id is not a Secrets Manager secret ARN " +
				"(arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME); give a valid ARN or " +
				"the secret's name")
		}
		return "", configError("the secret id %q is not a Secrets Manager secret ARN "+
			"(arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME); give a valid ARN or the "+
			"secret's name", id)
	}
	return a.Region, nil
}

func (s *secretSource) describe() string { return fmt.Sprintf("Secrets Manager secret %q", s.id) }

func (s *secretSource) fetch(ctx context.Context, now time.Time) (credential, error) {
	cred, err := s.fetchStage(ctx, stageCurrent)
	if err != nil {
		return credential{}, err
	}
	cred.expires = now.Add(secretTTL)
	return cred, nil
}

// fetchAfterRefusal gets the password to try after the server refused
// one: AWSCURRENT, unless it is still the refused version, in which case a
// single-user rotation has changed the database before moving AWSCURRENT,
// and the AWSPENDING version, if there is one, is the password to use.
func (s *secretSource) fetchAfterRefusal(ctx context.Context, now time.Time,
	refused credential) (credential, error) {
	cur, err := s.fetch(ctx, now)
	if err != nil || refused.version == "" || cur.version != refused.version {
		return cur, err
	}
	pending, ok, err := s.fetchPending(ctx, now)
	if err != nil || !ok || pending.version == refused.version {
		return cur, nil
	}
	s.log.Info("rdsconn: using the AWSPENDING version of the secret: rotation in progress",
		"secret", s.id, "version_id", pending.version)
	return pending, nil
}

// fetchPending returns the AWSPENDING version, or ok false when there is
// none.
func (s *secretSource) fetchPending(ctx context.Context, now time.Time) (credential, bool, error) {
	cred, err := s.fetchStage(ctx, stagePending)
	var notFound *types.ResourceNotFoundException
	if errors.As(err, &notFound) {
		return credential{}, false, nil
	}
	if err != nil {
		return credential{}, false, err
	}
	// A pending value is only good while the rotation lasts.
	cred.expires = now.Add(pendingTTL)
	cred.pending = true
	return cred, true, nil
}

func (s *secretSource) fetchStage(ctx context.Context, stage string) (credential, error) {
	client, err := s.clientFor(ctx)
	if err != nil {
		return credential{}, err
	}
	out, err := client.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{
		SecretId:     aws.String(s.id),
		VersionStage: aws.String(stage),
	})
	if err != nil {
		return credential{}, err
	}
	if out.SecretString == nil {
		return credential{}, fmt.Errorf("%w: the secret has no string value (binary secrets "+
			"are not supported)", ErrSecretFormat)
	}
	cred, err := parseSecret(*out.SecretString)
	if err != nil {
		return credential{}, err
	}
	cred.version = aws.ToString(out.VersionId)
	cred.stages = out.VersionStages
	s.log.Info("rdsconn: secret fetched", "secret", s.id, "stage", stage,
		"version_id", cred.version)
	return cred, nil
}

// isSecretName reports whether id can be a Secrets Manager secret name:
// 1 to 512 letters, digits and /_+=.@- characters.
func isSecretName(id string) bool {
	if id == "" || len(id) > 512 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
			strings.ContainsRune("/_+=.@-", r)) {
			return false
		}
	}
	return true
}

// clientFor makes the Secrets Manager client once, in the secret's region.
func (s *secretSource) clientFor(ctx context.Context) (*secretsmanager.Client, error) {
	if err := s.mu.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.unlock()
	if s.client != nil {
		return s.client, nil
	}
	cfg, err := s.aws.config(ctx)
	if err != nil {
		return nil, err
	}
	rs, err := s.aws.regions.find(ctx, cfg, s.arnRegion)
	if err != nil {
		return nil, err
	}
	s.log.Info("rdsconn: region found for Secrets Manager", "region", rs.region, "from", rs.from)
	s.client = secretsmanager.NewFromConfig(cfg, func(o *secretsmanager.Options) {
		o.Region = rs.region
	})
	return s.client, nil
}

func (s *secretSource) hints() []string {
	return []string{
		"a rotation is in progress or failed: the database and AWSCURRENT hold different " +
			"passwords (check the rotation function's logs)",
		"the secret names another user or database than the DSN",
	}
}

// parseSecret reads the JSON value of an RDS database secret. Errors never
// quote the value: a JSON syntax error would show a piece of it.
func parseSecret(value string) (credential, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal([]byte(value), &fields); err != nil {
		return credential{}, fmt.Errorf("%w: the secret value is not a JSON object; store it as "+
			`{"username":"...","password":"..."}`, ErrSecretFormat)
	}
	var cred credential
	for k := range fields {
		cred.keys = append(cred.keys, k)
	}
	slices.Sort(cred.keys)
	if raw, ok := fields["password"]; ok {
		if json.Unmarshal(raw, &cred.password) != nil {
			return credential{}, fmt.Errorf(`%w: the secret's "password" is not a string`,
				ErrSecretFormat)
		}
	}
	if cred.password == "" {
		return credential{}, fmt.Errorf(`%w: the secret has no non-empty "password" key`,
			ErrSecretFormat)
	}
	if raw, ok := fields["username"]; ok {
		if json.Unmarshal(raw, &cred.user) != nil {
			return credential{}, fmt.Errorf(`%w: the secret's "username" is not a string`,
				ErrSecretFormat)
		}
	}
	return cred, nil
}
