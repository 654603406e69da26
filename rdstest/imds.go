package rdstest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"time"
)

const (
	imdsTokenHeader = "X-Aws-Ec2-Metadata-Token"
	imdsTTLHeader   = "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"
	imdsMaxTTL      = 21600
)

// IMDSStats counts the requests an InstanceMetadata fake received.
type IMDSStats struct {
	// TokenRequests counts PUT /latest/api/token requests.
	TokenRequests int
	// Reads counts GET requests for metadata.
	Reads int
	// Unauthorized counts reads refused with 401 for a missing, unknown or
	// expired token, injected faults excluded.
	Unauthorized int
	// Faults counts requests answered with an injected status.
	Faults int
}

// InstanceMetadata is a fake of the EC2 instance metadata service (IMDSv2)
// served over HTTP on loopback: a session token from PUT
// /latest/api/token, then reads of the region and the instance identity
// document that must carry it. All its methods are safe for concurrent use.
type InstanceMetadata struct {
	srv       *httptest.Server
	closing   chan struct{}
	closeOnce sync.Once

	mu          sync.Mutex
	region      string
	tokens      map[string]time.Time // token → expiry
	tokenFaults []int
	readFaults  []int
	hang        bool
	allowV1     bool
	stats       IMDSStats
	seq         int
}

// NewInstanceMetadata starts an IMDSv2 fake that reports the given region.
// The caller must Close it.
func NewInstanceMetadata(region string) *InstanceMetadata {
	m := &InstanceMetadata{
		region:  region,
		closing: make(chan struct{}),
		tokens:  make(map[string]time.Time),
	}
	m.srv = httptest.NewServer(http.HandlerFunc(m.serveHTTP))
	return m
}

// URL returns the fake's base URL, for imds.Options.Endpoint or
// AWS_EC2_METADATA_SERVICE_ENDPOINT.
func (m *InstanceMetadata) URL() string { return m.srv.URL }

// HTTPClient returns an HTTP client for the fake. Close closes its idle
// connections, so tests that count goroutines should use it.
func (m *InstanceMetadata) HTTPClient() *http.Client { return m.srv.Client() }

// Close releases any hanging request and shuts the fake down.
func (m *InstanceMetadata) Close() {
	m.closeOnce.Do(func() { close(m.closing) })
	m.srv.Close()
}

// SetRegion changes the region the fake reports.
func (m *InstanceMetadata) SetRegion(region string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.region = region
}

// FailTokenRequests makes the next n token requests fail with the HTTP
// status, such as 400 (which the SDK treats as final) or 403, 404 and 405
// (after which it falls back to IMDSv1 unless told not to).
func (m *InstanceMetadata) FailTokenRequests(n, status int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for range n {
		m.tokenFaults = append(m.tokenFaults, status)
	}
}

// FailReads makes the next n metadata reads fail with the HTTP status, such
// as 401, after which the SDK fetches a new token and tries again.
func (m *InstanceMetadata) FailReads(n, status int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for range n {
		m.readFaults = append(m.readFaults, status)
	}
}

// SetHang makes every request, from now on, hang without an answer until
// the client gives up, as an address where nothing answers does.
func (m *InstanceMetadata) SetHang(hang bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.hang = hang
}

// AllowIMDSv1 lets reads without a token succeed, as on instances that do
// not require IMDSv2.
func (m *InstanceMetadata) AllowIMDSv1(allow bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.allowV1 = allow
}

// Stats returns a copy of the fake's counters.
func (m *InstanceMetadata) Stats() IMDSStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stats
}

func (m *InstanceMetadata) serveHTTP(w http.ResponseWriter, r *http.Request) {
	isToken := r.URL.Path == "/latest/api/token"

	m.mu.Lock()
	hang := m.hang
	var fault int
	if isToken {
		m.stats.TokenRequests++
		if len(m.tokenFaults) > 0 {
			fault, m.tokenFaults = m.tokenFaults[0], m.tokenFaults[1:]
		}
	} else {
		m.stats.Reads++
		if len(m.readFaults) > 0 {
			fault, m.readFaults = m.readFaults[0], m.readFaults[1:]
		}
	}
	if fault != 0 && !hang {
		m.stats.Faults++
	}
	m.mu.Unlock()

	if hang {
		select {
		case <-r.Context().Done():
		case <-m.closing:
		}
		return
	}
	if fault != 0 {
		http.Error(w, http.StatusText(fault), fault)
		return
	}
	if isToken {
		m.issueToken(w, r)
		return
	}
	m.read(w, r)
}

func (m *InstanceMetadata) issueToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	ttl, err := strconv.Atoi(r.Header.Get(imdsTTLHeader))
	if err != nil || ttl < 1 || ttl > imdsMaxTTL {
		http.Error(w, "bad token TTL", http.StatusBadRequest)
		return
	}

	m.mu.Lock()
	m.seq++
	token := fmt.Sprintf("rdstest-imds-token-%d", m.seq)
	m.tokens[token] = time.Now().Add(time.Duration(ttl) * time.Second)
	m.mu.Unlock()

	w.Header().Set(imdsTTLHeader, strconv.Itoa(ttl))
	_, _ = w.Write([]byte(token))
}

func (m *InstanceMetadata) read(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}

	m.mu.Lock()
	token := r.Header.Get(imdsTokenHeader)
	expiry, known := m.tokens[token]
	authorized := (known && time.Now().Before(expiry)) || (token == "" && m.allowV1)
	if !authorized {
		m.stats.Unauthorized++
	}
	region := m.region
	m.mu.Unlock()

	if !authorized {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	switch r.URL.Path {
	case "/latest/meta-data/placement/region":
		_, _ = w.Write([]byte(region))
	case "/latest/meta-data/placement/availability-zone":
		_, _ = w.Write([]byte(region + "a"))
	case "/latest/meta-data/instance-id":
		_, _ = w.Write([]byte(fakeInstanceID))
	case "/latest/dynamic/instance-identity/document":
		w.Header().Set("Content-Type", "text/plain")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"accountId":        fakeAccount,
			"architecture":     "x86_64",
			"availabilityZone": region + "a",
			"imageId":          "ami-0123456789abcdef0",
			"instanceId":       fakeInstanceID,
			"instanceType":     "t3.micro",
			"pendingTime":      "2024-01-01T00:00:00Z",
			"privateIp":        "10.0.0.10",
			"region":           region,
			"version":          "2017-09-30",
		})
	default:
		http.NotFound(w, r)
	}
}

const fakeInstanceID = "i-0123456789abcdef0"
