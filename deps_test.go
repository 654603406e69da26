package rdsconn

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies keeps package rdsconn's run-time dependencies to
// go-sql-driver, the AWS SDK (with smithy-go, which it is built on) and
// what they need. Test helpers such as rdstest may use more.
func TestDependencies(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	out, err := exec.Command("go", "list", "-deps",
		"-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").CombinedOutput()
	if err != nil {
		t.Skipf("go list failed (is the go command on PATH?): %v\n%s", err, out)
	}
	allowed := []string{
		"github.com/rdsconn/rdsconn",
		"github.com/go-sql-driver/mysql",
		"filippo.io/edwards25519", // go-sql-driver's, for ed25519 authentication
		"github.com/aws/aws-sdk-go-v2",
		"github.com/aws/smithy-go",
	}
	for _, pkg := range strings.Fields(string(out)) {
		ok := false
		for _, a := range allowed {
			if pkg == a || strings.HasPrefix(pkg, a+"/") {
				ok = true
			}
		}
		if !ok {
			t.Errorf("package rdsconn depends on %s", pkg)
		}
		if pkg == "github.com/rdsconn/rdsconn/rdstest" {
			t.Errorf("package rdsconn imports rdstest")
		}
	}
}
