package e2e_test

import (
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestArchitectureDoc holds docs/architecture.md's table of packages
// against the code: every package of the module (commands, tests and
// examples aside) has a row, and a row's imports are the package's own
// imports of this module, no more, no fewer.
func TestArchitectureDoc(t *testing.T) {
	const mod = "github.com/sluice-dev/sluice/"
	doc, err := os.ReadFile("../docs/architecture.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := documentedImports(t, string(doc))
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, mod+"...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		pkg := strings.TrimPrefix(f[0], mod)
		if pkg == "e2e" || strings.HasPrefix(pkg, "cmd/") || strings.HasPrefix(pkg, "clients/") {
			continue
		}
		want, ok := documented[pkg]
		if !ok {
			t.Errorf("docs/architecture.md: no row for package %s", pkg)
			continue
		}
		var got []string
		for _, imp := range f[1:] {
			if strings.HasPrefix(imp, mod) {
				got = append(got, strings.TrimPrefix(imp, mod))
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("docs/architecture.md: %s imports %v, the table says %v", pkg, got, want)
		}
	}
}

// documentedImports reads the table's rows whose second column lists
// imports ("—" for none): package -> its sorted imports.
func documentedImports(t *testing.T, doc string) map[string][]string {
	t.Helper()
	code := regexp.MustCompile("`([^`]+)`")
	rows := map[string][]string{}
	for _, line := range strings.Split(doc, "\n") {
		cols := strings.Split(line, "|")
		if len(cols) < 4 {
			continue
		}
		first, second := strings.TrimSpace(cols[1]), strings.TrimSpace(cols[2])
		if second != "—" && !strings.HasPrefix(second, "`") {
			continue
		}
		var imports []string
		for _, m := range code.FindAllStringSubmatch(second, -1) {
			imports = append(imports, m[1])
		}
		slices.Sort(imports)
		for _, m := range code.FindAllStringSubmatch(first, -1) {
			rows[m[1]] = imports
		}
	}
	if len(rows) == 0 {
		t.Fatal("docs/architecture.md: no table of packages found")
	}
	return rows
}
