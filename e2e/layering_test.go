package e2e_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestLayering keeps the design's dependency rules. deps: nothing the
// package pulls in, directly or not, may be one of these. imports: the
// package's own imports may not be one of these (net/http comes in
// through client_golang's prometheus package, which every metric needs,
// but no core package of ours serves or calls HTTP itself).
func TestLayering(t *testing.T) {
	const mod = "github.com/sluice-dev/sluice/"
	ours := func(pkgs ...string) []string {
		for i, p := range pkgs {
			pkgs[i] = mod + p
		}
		return pkgs
	}
	redis := "github.com/redis/go-redis/v9"
	promhttp := "github.com/prometheus/client_golang/prometheus/promhttp"
	for _, tc := range []struct {
		pkg           string
		deps, imports []string
	}{
		{"pkg/state", ours("pkg/limiter", "pkg/feedback", "pkg/store", "lua"), []string{"net/http"}},
		{"pkg/limiter", append(ours("pkg/feedback", "pkg/store", "pkg/pipeline", "pkg/config"), promhttp), []string{"net/http"}},
		{"pkg/feedback", append(ours("pkg/limiter", "pkg/store", "pkg/feedback/redisbus", "pkg/feedback/httpbus", "lua"), redis, promhttp), []string{"net/http"}},
		{"pkg/store", append(ours("pkg/limiter", "pkg/feedback/redisbus", "pkg/feedback/httpbus", "pkg/pipeline", "lua"), redis, promhttp), []string{"net/http"}},
		{"pkg/feedback/redisbus", ours("pkg/limiter", "pkg/store", "pkg/feedback/httpbus"), []string{"net/http"}},
		{"pkg/feedback/httpbus", append(ours("pkg/limiter", "pkg/store", "pkg/feedback/redisbus"), redis), nil},
		{"pkg/pipeline", ours("pkg/store", "pkg/config", "internal/sim"), nil},
		{"pkg/store/redisstream", ours("pkg/limiter", "pkg/feedback/redisbus", "pkg/feedback/httpbus", "pkg/pipeline", "pkg/config"), []string{"net/http"}},
	} {
		out, err := exec.Command("go", "list", "-deps", mod+tc.pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", tc.pkg, err)
		}
		deps := strings.Fields(string(out))
		for _, f := range tc.deps {
			if slices.Contains(deps, f) {
				t.Errorf("%s depends on %s", tc.pkg, f)
			}
		}
		out, err = exec.Command("go", "list", "-f", `{{join .Imports " "}}`, mod+tc.pkg).Output()
		if err != nil {
			t.Fatalf("go list -f {{.Imports}} %s: %v", tc.pkg, err)
		}
		imports := strings.Fields(string(out))
		for _, f := range tc.imports {
			if slices.Contains(imports, f) {
				t.Errorf("%s imports %s", tc.pkg, f)
			}
		}
	}
}

// TestKeyspaceIsLeaf keeps pkg/keyspace, which limiter, feedback and store
// all ask for their key names, on the standard library alone.
func TestKeyspaceIsLeaf(t *testing.T) {
	const pkg = "github.com/sluice-dev/sluice/pkg/keyspace"
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	if deps := strings.Fields(string(out)); !slices.Equal(deps, []string{pkg}) {
		t.Errorf("%s: packages outside the standard library in its dependencies: %v, want only itself", pkg, deps)
	}
}
