package lua

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Every script is in Names, documents its KEYS and reply at its top, and has
// a section in docs/lua.md.
func TestScriptsDocumented(t *testing.T) {
	files, _ := filepath.Glob("*.lua")
	doc, err := os.ReadFile("../docs/lua.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(f, ".lua")
		if name == "lib" {
			continue
		}
		if !slices.Contains(Names, name) {
			t.Errorf("%s is not in Names", f)
		}
		body, _ := os.ReadFile(f)
		head := string(body[:min(len(body), 3000)])
		if !strings.HasPrefix(head, "-- "+f+":") || !strings.Contains(head, "-- KEYS[1]") || !strings.Contains(head, "Reply") {
			t.Errorf("%s: header must start with '-- %s:' and document KEYS and the reply", f, f)
		}
		if !strings.Contains(string(doc), "### "+name+"\n") {
			t.Errorf("docs/lua.md has no section for %s", name)
		}
	}
	for _, name := range Names {
		if src := Source(name); !strings.Contains(src, "local function now_us()") {
			t.Errorf("Source(%q) lacks the prelude", name)
		}
	}
}
