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
		if name == "lib" || name == "pack" { // shared parts, not scripts
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
		if src := Source(name); !strings.HasPrefix(src, "-- sluice Lua prelude") {
			t.Errorf("Source(%q) lacks the prelude", name)
		}
	}
}

// Source puts pack.lua where a script includes it, once, and leaves no
// include line in any script; acquire takes it in inside its rules form
// only, so that the plain form makes none of its functions.
func TestSourceIncludes(t *testing.T) {
	pack, err := os.ReadFile("pack.lua")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range Names {
		src := Source(name)
		if strings.Contains(src, includeLine) {
			t.Errorf("Source(%q) keeps an include line", name)
		}
		want := 0
		if name == "acquire" || name == "permit" {
			want = 1
		}
		if got := strings.Count(src, string(pack)); got != want {
			t.Errorf("Source(%q) has pack.lua %d times, want %d", name, got, want)
		}
	}
	if !strings.Contains(Source("acquire"), "if rules_form then\n"+string(pack)+"end\n") {
		t.Errorf("Source(acquire) does not take pack.lua in inside 'if rules_form then'")
	}
	for _, part := range []string{"pack", "lib"} { // parts, not scripts
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Source(%q) did not panic", part)
				}
			}()
			Source(part)
		}()
	}
	defer func() {
		if recover() == nil {
			t.Errorf("includes of a missing file did not panic")
		}
	}()
	includes("x = 1\n  -- #include nothing.lua\n")
}

// Source keeps every helper of lib.lua a script names in its code (or
// through a helper it keeps), and leaves out the others: acquire, the hot
// path, defines none that only other scripts use.
func TestSourceHelpers(t *testing.T) {
	lib, err := os.ReadFile("lib.lua")
	if err != nil {
		t.Fatal(err)
	}
	var helpers []string
	for _, p := range parts(string(lib)) {
		if p.name != "" {
			helpers = append(helpers, p.name)
		}
	}
	if len(helpers) < 10 || !slices.Contains(helpers, "num") || !slices.Contains(helpers, "settle") {
		t.Fatalf("helpers of lib.lua read as %v", helpers)
	}
	defined := func(src, h string) bool { return strings.Contains(src, "\nlocal function "+h+"(") }
	for _, name := range Names {
		src := Source(name)
		for _, h := range helpers {
			if names(code(src), h) && !defined(src, h) {
				t.Errorf("Source(%q) names %s but leaves it out", name, h)
			}
		}
	}
	for _, h := range []string{"load_config", "registered_config", "load_scale", "finite"} {
		if defined(Source("acquire"), h) {
			t.Errorf("Source(acquire) defines %s, which it never calls", h)
		}
	}
	if !defined(Source("status"), "load_config") || !defined(Source("status"), "num") { // named through registered_config, load_scale
		t.Errorf("Source(status) lacks load_config or num")
	}
	for text, want := range map[string]bool{
		"x = dec(y)":                 true,
		"x = 1 -- dec(y)":            false,
		"x = 'dec(y)'":               false,
		"x = 'it\\'s' .. dec(y)":     true,
		"x = \"a -- b\" .. dec(y)":   true,
		"x = decimal(y) + y.dec_x":   false,
		"local function dec(x)\nend": true,
	} {
		if got := names(code(text), "dec"); got != want {
			t.Errorf("names(code(%q), dec) = %v, want %v", text, got, want)
		}
	}
}
