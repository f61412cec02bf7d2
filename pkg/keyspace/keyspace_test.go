package keyspace_test

import (
	"bufio"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/pkg/keyspace"
)

// doc is a document's key table: where it is, and how it writes the names
// in the keys (its placeholders).
type doc struct {
	path               string
	section, next      string // the table sits between these headings
	prefix             keyspace.Prefix
	provider, pressure string // a provider, a write coordinator
	stream             string
}

var docs = []doc{
	{"../../docs/lua.md", "## Keys", "## The model", "P", "p", "c", "s"},
	{"../../README.md", "### Redis keys", "### Metrics", "sluice", "P", "C", "S"},
}

// named are the arguments the documents write for the builders that take
// a name; levels are written out.
func (d doc) named(builder string) ([]string, bool) {
	a, ok := map[string][]string{
		"Pressure":      {d.pressure},
		"PressureLevel": {"hard", "soft"},
		"Stream":        {d.stream},
		"StreamRefused": {d.stream},
	}[builder]
	return a, ok
}

// ruleArgs are the arguments the documents write for a Provider builder
// of a rule's key: the rule r, the request key k.
func (d doc) ruleArgs(builder string) ([]string, bool) {
	a, ok := map[string][]string{"RuleKey": {"r", "k"}}[builder]
	return a, ok
}

// built returns every key and channel the builders make under d's
// placeholders, each with the builder that made it. A new builder that
// takes a name must be added to named, so no builder escapes the check.
func (d doc) built(t *testing.T) map[string]string {
	out := map[string]string{}
	add := func(key, builder string) {
		if other, ok := out[key]; ok {
			t.Errorf("%s and %s both build %s", other, builder, key)
		}
		out[key] = builder
	}
	p := reflect.ValueOf(d.prefix)
	for i := range p.NumMethod() {
		name, m := p.Type().Method(i).Name, p.Method(i)
		switch {
		case name == "String":
		case name == "Provider":
			keys := reflect.ValueOf(d.prefix.Provider(d.provider))
			for j := range keys.NumField() {
				add(keys.Field(j).String(), "Provider(...)."+keys.Type().Field(j).Name)
			}
			for j := range keys.NumMethod() {
				name := keys.Type().Method(j).Name
				args, ok := d.ruleArgs(name)
				if !ok {
					t.Fatalf("Provider builder %s takes names: say in doc.ruleArgs what the documents write for it", name)
				}
				var in []reflect.Value
				for _, a := range args {
					in = append(in, reflect.ValueOf(a))
				}
				add(keys.Method(j).Call(in)[0].String(), "Provider(...)."+name+"("+strings.Join(args, ", ")+")")
			}
		case m.Type().NumIn() == 0:
			add(m.Call(nil)[0].String(), name+"()")
		default:
			args, ok := d.named(name)
			if !ok {
				t.Fatalf("builder %s takes a name: say in doc.named what the documents write for it", name)
			}
			for _, a := range args {
				add(m.Call([]reflect.Value{reflect.ValueOf(a)})[0].String(), name+"("+a+")")
			}
		}
	}
	return out
}

var (
	backticked = regexp.MustCompile("`([^`]+)`")
	channel    = regexp.MustCompile("^Pub/sub channel `([^`]+)`")
)

// documented returns the keys and channels d's table lists: every
// backticked name in the first column of its rows, and the channels its
// section names in a paragraph of their own ("Pub/sub channel `...`").
func (d doc) documented(t *testing.T) []string {
	f, err := os.Open(d.path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var keys []string
	in := false
	for sc := bufio.NewScanner(f); sc.Scan(); {
		line := sc.Text()
		switch {
		case line == d.section:
			in = true
		case line == d.next:
			in = false
		case !in:
		case strings.HasPrefix(line, "| ") && !strings.HasPrefix(line, "| key "):
			first, _, _ := strings.Cut(line[2:], " | ")
			for _, m := range backticked.FindAllStringSubmatch(first, -1) {
				keys = append(keys, m[1])
			}
		case channel.MatchString(line):
			keys = append(keys, channel.FindStringSubmatch(line)[1])
		}
	}
	if len(keys) == 0 {
		t.Fatalf("%s: no key table between %q and %q", d.path, d.section, d.next)
	}
	return keys
}

// TestDocumentedKeys holds the builders against the key tables of
// docs/lua.md (the contract with the Lua scripts and other clients) and
// the README: every documented key or channel is built, byte for byte, by
// one builder, and every builder builds a documented one.
func TestDocumentedKeys(t *testing.T) {
	for _, d := range docs {
		t.Run(d.path, func(t *testing.T) {
			built := d.built(t)
			documented := d.documented(t)
			for _, k := range documented {
				if _, ok := built[k]; !ok {
					t.Errorf("%s lists %s, which no builder makes", d.path, k)
				}
			}
			for k, builder := range built {
				if !slices.Contains(documented, k) {
					t.Errorf("%s builds %s, which %s does not list", builder, k, d.path)
				}
			}
		})
	}
}

func TestZeroPrefixIsDefault(t *testing.T) {
	if got, want := keyspace.Prefix("").Provider("ibkr"), keyspace.Prefix(keyspace.DefaultPrefix).Provider("ibkr"); got != want {
		t.Errorf("zero prefix: %+v, want %+v", got, want)
	}
	if got := keyspace.Prefix("").Stream("store"); got != "sluice:stream:{store}" {
		t.Errorf("zero prefix: stream key %s", got)
	}
}

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"ibkr", true},
		{"a", true},
		{"A-Z_a.z-0.9", true},
		{strings.Repeat("x", keyspace.MaxName), true},
		{strings.Repeat("x", keyspace.MaxName+1), false},
		{"", false},
		{"ib{kr", false}, // would end the hash tag early
		{"ib}kr", false},
		{"ib:kr", false},
		{"ib kr", false},
		{"ibkr\n", false},
		{"é", false},
	} {
		if got := keyspace.ValidName(tc.name); got != tc.ok {
			t.Errorf("ValidName(%q) = %v, want %v", tc.name, got, tc.ok)
		}
	}
	if want := "1 to " + strconv.Itoa(keyspace.MaxName) + " characters of " + keyspace.NameChars; keyspace.NameRule != want {
		t.Errorf("NameRule = %q, want %q", keyspace.NameRule, want)
	}
}
