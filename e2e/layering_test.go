package e2e_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLayering keeps the design's dependency rules: the limiter never
// imports feedback or store; feedback never imports the limiter; store never
// imports the limiter.
func TestLayering(t *testing.T) {
	const mod = "github.com/sluice-dev/sluice/"
	for pkg, forbidden := range map[string][]string{
		"pkg/limiter":  {"pkg/feedback", "pkg/store"},
		"pkg/feedback": {"pkg/limiter", "pkg/store"},
		"pkg/store":    {"pkg/limiter"},
	} {
		out, err := exec.Command("go", "list", "-deps", mod+pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", pkg, err)
		}
		deps := strings.Fields(string(out))
		for _, f := range forbidden {
			for _, d := range deps {
				if d == mod+f {
					t.Errorf("%s imports %s", pkg, f)
				}
			}
		}
	}
}
