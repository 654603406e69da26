package rdstest

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
)

// FuzzCheckToken checks that no input makes the token check panic, and
// that nothing but the genuine signature is ever accepted.
func FuzzCheckToken(f *testing.F) {
	ctx := context.Background()
	at := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	valid, err := TokenAt(ctx, DefaultEndpoint, "us-east-1", "app", sessionCreds, at)
	if err != nil {
		f.Fatal(err)
	}
	u, err := url.Parse("https://" + valid)
	if err != nil {
		f.Fatal(err)
	}
	signature := u.Query().Get("X-Amz-Signature")
	policy := tokenPolicy{hostPort: DefaultEndpoint, region: "us-east-1", user: "app",
		now: at.Add(time.Minute), creds: func(akid string) (aws.Credentials, bool) {
			return sessionCreds, akid == sessionCreds.AccessKeyID
		}}

	f.Add(valid)
	f.Add(strings.Replace(valid, "?", "/?", 1))
	f.Add(strings.Replace(valid, "DBUser=app", "DBUser=app&DBUser=app", 1))
	f.Add("")
	f.Add("?")
	f.Add(DefaultEndpoint + "/?X-Amz-Credential=a/b/c/d/e")
	f.Fuzz(func(t *testing.T, token string) {
		facts := checkToken(ctx, token, policy)
		if facts.Reason != "" {
			return
		}
		q, err := url.ParseQuery(token[strings.Index(token, "?")+1:])
		if err != nil || q.Get("X-Amz-Signature") != signature || facts.DBUser != "app" {
			t.Errorf("accepted a token that was not signed by the trusted key: %q", token)
		}
	})
}
