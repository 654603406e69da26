package rdstest

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
)

// The staging labels Secrets Manager uses during a rotation.
const (
	// StageCurrent labels the version clients should use.
	StageCurrent = "AWSCURRENT"
	// StagePending labels the version a rotation is installing.
	StagePending = "AWSPENDING"
	// StagePrevious labels the version that was current before the last
	// promotion.
	StagePrevious = "AWSPREVIOUS"
)

// fakeAccount is the AWS account id in the fakes' ARNs.
const fakeAccount = "123456789012"

// APIFault is an error a fake AWS API answers instead of doing its work.
type APIFault struct {
	// Status is the HTTP status. Zero means 400.
	Status int
	// Type is the error's __type, such as ThrottlingException, which the SDK
	// maps to a typed error when the service models it.
	Type string
	// Message is the error message.
	Message string
	// Malformed answers 200 with a body that is not JSON, instead of Status
	// and Type.
	Malformed bool
	// Stall holds the request without an answer until the client gives up
	// or the fake is closed, instead of answering.
	Stall bool
}

// Faults for FailNext, as Secrets Manager sends them.
var (
	// FaultThrottling is the SDK-retryable "Rate exceeded" error.
	FaultThrottling = APIFault{Status: 400, Type: "ThrottlingException", Message: "Rate exceeded"}
	// FaultInternal is a server-side failure, retryable by the SDK.
	FaultInternal = APIFault{Status: 500, Type: "InternalServiceError",
		Message: "An error occurred on the server side."}
	// FaultDecryption is the error for a secret whose KMS key the caller
	// may not use; the SDK maps it to *types.DecryptionFailure.
	FaultDecryption = APIFault{Status: 400, Type: "DecryptionFailure",
		Message: "Secrets Manager can't decrypt the protected secret text using the provided KMS key."}
	// FaultAccessDenied is the error for a caller without
	// secretsmanager:GetSecretValue permission.
	FaultAccessDenied = APIFault{Status: 400, Type: "AccessDeniedException",
		Message: "User is not authorized to perform: secretsmanager:GetSecretValue"}
	// FaultMalformed answers 200 with a body that is not JSON.
	FaultMalformed = APIFault{Malformed: true}
	// FaultStall never answers.
	FaultStall = APIFault{Stall: true}
)

// SecretsRequest is the non-secret record of one GetSecretValue call.
type SecretsRequest struct {
	// SecretID is the SecretId asked for: a name or an ARN.
	SecretID string
	// VersionStage is the VersionStage asked for, if any.
	VersionStage string
	// VersionID is the VersionId asked for, if any.
	VersionID string
	// Region is the region the request was signed for.
	Region string
	// AccessKeyID is the access key id the request was signed with.
	AccessKeyID string
}

// SecretsStats counts the calls a SecretsManager fake received.
type SecretsStats struct {
	// GetSecretValue counts GetSecretValue calls, failed ones included.
	GetSecretValue int
	// ByStage counts GetSecretValue calls by the staging label asked for;
	// a call naming neither a label nor a version id counts as AWSCURRENT.
	ByStage map[string]int
	// Failed counts calls answered with an error, injected or not.
	Failed int
	// Faults counts calls answered with an injected APIFault.
	Faults int
	// Requests records every GetSecretValue call, oldest first.
	Requests []SecretsRequest
}

// SecretsManager is a fake of AWS Secrets Manager's GetSecretValue, served
// over HTTP on loopback in the JSON 1.1 protocol the SDK speaks. Secrets
// have versions and staging labels, so that a test can play a rotation.
// All its methods are safe for concurrent use.
type SecretsManager struct {
	srv       *httptest.Server
	region    string
	closing   chan struct{}
	closeOnce sync.Once

	mu      sync.Mutex
	secrets map[string]*fakeSecret // by name
	faults  []APIFault
	delay   time.Duration
	stats   SecretsStats
	seq     int
}

type fakeSecret struct {
	name     string
	arn      string
	versions []*secretVersion // oldest first
}

type secretVersion struct {
	id      string
	value   string
	stages  []string
	created time.Time
}

// NewSecretsManager starts a Secrets Manager fake whose ARNs name the
// given region, us-east-1 if empty. The caller must Close it.
func NewSecretsManager(region string) *SecretsManager {
	if region == "" {
		region = "us-east-1"
	}
	s := &SecretsManager{
		region:  region,
		closing: make(chan struct{}),
		secrets: make(map[string]*fakeSecret),
		stats:   SecretsStats{ByStage: make(map[string]int)},
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serveHTTP))
	return s
}

// URL returns the fake's base URL, for aws.Config.BaseEndpoint.
func (s *SecretsManager) URL() string { return s.srv.URL }

// HTTPClient returns an HTTP client for the fake. Close closes its idle
// connections, so tests that count goroutines should use it.
func (s *SecretsManager) HTTPClient() *http.Client { return s.srv.Client() }

// Region returns the region in the fake's ARNs.
func (s *SecretsManager) Region() string { return s.region }

// AWSConfig returns an AWS configuration that sends Secrets Manager calls
// to the fake with static test credentials. Its retryer makes up to three
// attempts without waiting between them.
func (s *SecretsManager) AWSConfig() aws.Config {
	return aws.Config{
		Region: s.region,
		Credentials: credentials.NewStaticCredentialsProvider("AKIDSECRETSTEST00001",
			"rdstest-secrets-secret-key", ""),
		BaseEndpoint: aws.String(s.srv.URL),
		HTTPClient:   s.srv.Client(),
		Retryer:      quickRetryer,
	}
}

// quickRetryer retries as the SDK's standard retryer does, without the
// waits and the retry quota, so that tests of retries run fast.
func quickRetryer() aws.Retryer {
	return retry.NewStandard(func(o *retry.StandardOptions) {
		o.MaxAttempts = 3
		o.Backoff = noBackoff{}
		o.RateLimiter = ratelimit.None
	})
}

type noBackoff struct{}

func (noBackoff) BackoffDelay(int, error) (time.Duration, error) { return 0, nil }

// Close releases any stalled call and shuts the fake down.
func (s *SecretsManager) Close() {
	s.closeOnce.Do(func() { close(s.closing) })
	s.srv.Close()
}

// ARN returns the ARN of the named secret, whether or not it exists. The
// six-character suffix Secrets Manager adds is derived from the name.
func (s *SecretsManager) ARN(name string) string {
	sum := sha256.Sum256([]byte(name))
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	suffix := make([]byte, 6)
	for i := range suffix {
		suffix[i] = letters[int(sum[i])%len(letters)]
	}
	return fmt.Sprintf("arn:aws:secretsmanager:%s:%s:secret:%s-%s", s.region, fakeAccount, name,
		suffix)
}

// PutSecret stores value as a new AWSCURRENT version of the named secret,
// creating the secret if needed; the version that was current becomes
// AWSPREVIOUS. It returns the new version id.
func (s *SecretsManager) PutSecret(name, value string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec := s.secrets[name]
	if sec == nil {
		sec = &fakeSecret{name: name, arn: s.ARN(name)}
		s.secrets[name] = sec
	}
	v := s.newVersion(sec, value)
	sec.promote(v)
	return v.id
}

// PutPending stores value as a new AWSPENDING version of an existing
// secret, as the first step of a rotation does, and returns its version id.
func (s *SecretsManager) PutPending(name, value string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec := s.secrets[name]
	if sec == nil {
		return "", fmt.Errorf("rdstest: no secret named %q", name)
	}
	for _, v := range sec.versions {
		v.stages = slices.DeleteFunc(v.stages, func(st string) bool { return st == StagePending })
	}
	v := s.newVersion(sec, value)
	v.stages = []string{StagePending}
	return v.id, nil
}

// Promote moves AWSCURRENT to the given version, as the last step of a
// rotation does: the version that was current becomes AWSPREVIOUS and the
// promoted version loses AWSPENDING.
func (s *SecretsManager) Promote(name, versionID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec := s.secrets[name]
	if sec == nil {
		return fmt.Errorf("rdstest: no secret named %q", name)
	}
	for _, v := range sec.versions {
		if v.id == versionID {
			sec.promote(v)
			return nil
		}
	}
	return fmt.Errorf("rdstest: secret %q has no version %q", name, versionID)
}

// Stages returns the staging labels of each version of the named secret,
// by version id.
func (s *SecretsManager) Stages(name string) map[string][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string][]string)
	if sec := s.secrets[name]; sec != nil {
		for _, v := range sec.versions {
			out[v.id] = slices.Clone(v.stages)
		}
	}
	return out
}

// DeleteSecret removes the named secret, so that calls for it fail with
// ResourceNotFoundException.
func (s *SecretsManager) DeleteSecret(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.secrets, name)
}

// FailNext makes the next n GetSecretValue calls fail with f. Faults queue
// after any already pending. SDK retries are calls too.
func (s *SecretsManager) FailNext(n int, f APIFault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.faults = append(s.faults, f)
	}
}

// SetDelay makes every call wait d before it is answered, or until the
// client gives up.
func (s *SecretsManager) SetDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// Stats returns a copy of the fake's counters.
func (s *SecretsManager) Stats() SecretsStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.ByStage = maps.Clone(s.stats.ByStage)
	st.Requests = slices.Clone(s.stats.Requests)
	return st
}

// ResetStats sets every counter back to zero.
func (s *SecretsManager) ResetStats() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats = SecretsStats{ByStage: make(map[string]int)}
}

// newVersion appends a version without labels. The caller holds s.mu.
func (s *SecretsManager) newVersion(sec *fakeSecret, value string) *secretVersion {
	s.seq++
	v := &secretVersion{
		id:      fmt.Sprintf("00000000-0000-4000-8000-%012d", s.seq),
		value:   value,
		created: time.Now().UTC().Truncate(time.Millisecond),
	}
	sec.versions = append(sec.versions, v)
	return v
}

func (sec *fakeSecret) promote(to *secretVersion) {
	if slices.Contains(to.stages, StageCurrent) {
		return
	}
	for _, v := range sec.versions {
		v.stages = slices.DeleteFunc(v.stages, func(st string) bool { return st == StagePrevious })
	}
	for _, v := range sec.versions {
		if i := slices.Index(v.stages, StageCurrent); i >= 0 {
			v.stages[i] = StagePrevious
		}
	}
	to.stages = slices.DeleteFunc(to.stages, func(st string) bool { return st == StagePending })
	to.stages = append(to.stages, StageCurrent)
}

// find looks a secret up by name, full ARN or ARN without its suffix.
// The caller holds s.mu.
func (s *SecretsManager) find(id string) *fakeSecret {
	if sec := s.secrets[id]; sec != nil {
		return sec
	}
	for _, sec := range s.secrets {
		if id == sec.arn || id == sec.arn[:len(sec.arn)-7] {
			return sec
		}
	}
	return nil
}

type getSecretValueInput struct {
	SecretID     string `json:"SecretId"`
	VersionID    string `json:"VersionId"`
	VersionStage string `json:"VersionStage"`
}

type getSecretValueOutput struct {
	ARN           string   `json:"ARN"`
	Name          string   `json:"Name"`
	VersionID     string   `json:"VersionId"`
	SecretString  string   `json:"SecretString"`
	VersionStages []string `json:"VersionStages"`
	CreatedDate   float64  `json:"CreatedDate"`
}

func (s *SecretsManager) serveHTTP(w http.ResponseWriter, r *http.Request) {
	target := r.Header.Get("X-Amz-Target")
	if r.Method != http.MethodPost || target != "secretsmanager.GetSecretValue" {
		writeAWSError(w, 400, "UnknownOperationException", "rdstest: only GetSecretValue is faked")
		return
	}
	var in getSecretValueInput
	decodeErr := json.NewDecoder(r.Body).Decode(&in)
	region, akid := signedBy(r)

	s.mu.Lock()
	s.stats.GetSecretValue++
	s.stats.Requests = append(s.stats.Requests, SecretsRequest{
		SecretID: in.SecretID, VersionStage: in.VersionStage, VersionID: in.VersionID,
		Region: region, AccessKeyID: akid,
	})
	switch {
	case in.VersionStage != "":
		s.stats.ByStage[in.VersionStage]++
	case in.VersionID == "":
		s.stats.ByStage[StageCurrent]++
	}
	var fault *APIFault
	if len(s.faults) > 0 {
		fault = &s.faults[0]
		s.faults = s.faults[1:]
		s.stats.Faults++
		s.stats.Failed++
	}
	delay := s.delay
	s.mu.Unlock()

	if !s.wait(r, delay, fault != nil && fault.Stall) {
		return
	}
	if fault != nil {
		writeFault(w, *fault)
		return
	}

	out, status, errType, msg := s.lookup(in, decodeErr, akid)
	if errType != "" {
		s.mu.Lock()
		s.stats.Failed++
		s.mu.Unlock()
		writeAWSError(w, status, errType, msg)
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	_ = json.NewEncoder(w).Encode(out)
}

// lookup answers a GetSecretValue call, or says which error to send.
func (s *SecretsManager) lookup(in getSecretValueInput, decodeErr error,
	akid string) (out getSecretValueOutput, status int, errType, msg string) {
	const notFound = "ResourceNotFoundException"
	switch {
	case akid == "":
		return out, 400, "MissingAuthenticationTokenException", "Request is missing Authentication Token"
	case decodeErr != nil:
		return out, 400, "SerializationException", "rdstest: the request body is not JSON"
	case in.SecretID == "":
		return out, 400, "InvalidParameterException", "SecretId is required"
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	sec := s.find(in.SecretID)
	if sec == nil {
		return out, 400, notFound, "Secrets Manager can't find the specified secret."
	}
	stage := in.VersionStage
	if stage == "" && in.VersionID == "" {
		stage = StageCurrent
	}
	var found *secretVersion
	for _, v := range sec.versions {
		if (in.VersionID == "" || v.id == in.VersionID) &&
			(stage == "" || slices.Contains(v.stages, stage)) {
			found = v
		}
	}
	if found == nil {
		what := "staging label: " + stage
		if in.VersionID != "" {
			what = "VersionId: " + in.VersionID
		}
		return out, 400, notFound, "Secrets Manager can't find the specified secret value for " + what
	}
	return getSecretValueOutput{
		ARN:           sec.arn,
		Name:          sec.name,
		VersionID:     found.id,
		SecretString:  found.value,
		VersionStages: slices.Clone(found.stages),
		CreatedDate:   float64(found.created.UnixMilli()) / 1000,
	}, 200, "", ""
}

// wait holds a call for the delay, or forever when stall is set, and says
// whether to answer it: not when the client gave up or the fake closed.
func (s *SecretsManager) wait(r *http.Request, delay time.Duration, stall bool) bool {
	if delay <= 0 && !stall {
		return true
	}
	var timer <-chan time.Time
	if !stall {
		t := time.NewTimer(delay)
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-timer:
		return true
	case <-r.Context().Done():
	case <-s.closing:
	}
	return false
}

func writeFault(w http.ResponseWriter, f APIFault) {
	if f.Malformed {
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		_, _ = w.Write([]byte(`{"ARN": "arn:aws:secretsmanager:`))
		return
	}
	status := f.Status
	if status == 0 {
		status = 400
	}
	writeAWSError(w, status, f.Type, f.Message)
}

func writeAWSError(w http.ResponseWriter, status int, errType, msg string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-ErrorType", errType)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"__type": errType, "message": msg})
}

// signedBy reads the region and access key id from a SigV4 Authorization
// header, or returns empty strings.
func signedBy(r *http.Request) (region, akid string) {
	_, rest, ok := strings.Cut(r.Header.Get("Authorization"), "Credential=")
	if !ok {
		return "", ""
	}
	cred, _, _ := strings.Cut(rest, ",")
	parts := strings.Split(cred, "/")
	if len(parts) != 5 {
		return "", ""
	}
	return parts[2], parts[0]
}
