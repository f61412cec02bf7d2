// Package lua holds sluice's Redis scripts, the cross-language contract of the
// shared limiter and of the write stream's consumers. Each script is one file; lib.lua is a prelude of helpers that
// is prepended to every script, so the text a client must load (EVAL/EVALSHA)
// is Source(name), not the file alone. docs/lua.md documents KEYS, ARGV,
// replies and the key schema; each file repeats its own part at the top.
package lua

import (
	"embed"
	"fmt"
	"slices"
	"strings"
)

//go:embed *.lua
var files embed.FS

// Names lists the scripts, without the .lua suffix, in a stable order: the
// limiter's, then the write stream consumers' (refuse, forget).
var Names = []string{"register", "acquire", "set_scale", "annotate", "breaker", "cooldown", "heartbeat", "status", "pressure", "lease", "refund", "set_rules", "permit", "set_lanes", "refuse", "forget"}

// Source returns the complete text of the named script: lib.lua followed by
// <name>.lua, less the helpers of lib.lua that the script never names
// (directly or through another helper it keeps). Redis runs the whole text
// on every call, and defining a function it never calls costs about 1 100
// instructions a call; the whole lib.lua followed by the script runs the
// same. It panics on a name not in Names, a programming error.
func Source(name string) string {
	lib, err := files.ReadFile("lib.lua")
	if err != nil {
		panic(err)
	}
	body, err := files.ReadFile(name + ".lua")
	if err != nil || !slices.Contains(Names, name) { // lib.lua and pack.lua are parts, not scripts
		panic(fmt.Sprintf("lua: no script %q", name))
	}
	text := includes(string(body))
	return prelude(string(lib), text) + "\n" + text
}

// includeLine is how a script takes in a shared part that is not a
// prelude helper: the line, alone (indented or not), is replaced by the
// named file's text. pack.lua is one: code that acquire runs only in its
// rules form, where a helper of lib.lua would be made on every call.
const includeLine = "-- #include "

// includes is body with each include line replaced by its file. It
// panics on a file that does not exist, a programming error.
func includes(body string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(body, "\n") {
		file, ok := strings.CutPrefix(strings.TrimSpace(line), includeLine)
		if !ok {
			b.WriteString(line)
			continue
		}
		text, err := files.ReadFile(file)
		if err != nil {
			panic(fmt.Sprintf("lua: %s: %v", strings.TrimSpace(line), err))
		}
		b.Write(text)
	}
	return b.String()
}

// A part of lib.lua: a helper (a top-level "local function", with the
// comment lines right above it, to the "end" that closes it at the start of
// a line), or any other text (name "").
type part struct {
	name, text string
}

func parts(lib string) []part {
	var out []part
	var pending, cur strings.Builder // comment lines not yet placed; the helper being read
	name := ""
	for _, line := range strings.SplitAfter(lib, "\n") {
		switch {
		case name != "":
			cur.WriteString(line)
			if strings.TrimRight(line, "\n") == "end" {
				out = append(out, part{name, cur.String()})
				name = ""
				cur.Reset()
			}
		case strings.HasPrefix(line, "local function "):
			name, _, _ = strings.Cut(strings.TrimPrefix(line, "local function "), "(")
			cur.WriteString(pending.String())
			cur.WriteString(line)
			pending.Reset()
		case strings.HasPrefix(line, "--"):
			pending.WriteString(line)
		default:
			out = append(out, part{"", pending.String() + line})
			pending.Reset()
		}
	}
	return append(out, part{"", pending.String() + cur.String()})
}

// prelude is lib less the helpers that neither body nor a helper kept names
// (in code: comments and strings do not count).
func prelude(lib, body string) string {
	ps := parts(lib)
	keep := map[string]bool{}
	used := code(body)
	for grew := true; grew; {
		grew = false
		for _, p := range ps {
			if p.name != "" && !keep[p.name] && names(used, p.name) {
				keep[p.name], used, grew = true, used+code(p.text), true
			}
		}
	}
	var b strings.Builder
	for _, p := range ps {
		if p.name == "" || keep[p.name] {
			b.WriteString(p.text)
		}
	}
	return b.String()
}

// code is text without its comments ("--" to the end of the line) and
// the contents of its quoted strings: the names a program uses. (Long
// brackets, [[...]], are not read as strings; lib.lua has none.)
func code(text string) string {
	b := []byte(text)
	var quote byte // the open string's quote, 0 outside strings
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case quote != 0 && c == '\\' && i+1 < len(b):
			b[i], b[i+1] = ' ', ' '
			i++
		case quote != 0 && (c == quote || c == '\n'):
			quote = 0
		case quote != 0:
			b[i] = ' '
		case c == '\'' || c == '"':
			quote = c
		case c == '-' && i+1 < len(b) && b[i+1] == '-':
			for ; i < len(b) && b[i] != '\n'; i++ {
				b[i] = ' '
			}
		}
	}
	return string(b)
}

// names reports whether text has the identifier id as a whole word.
func names(text, id string) bool {
	for i := 0; ; {
		j := strings.Index(text[i:], id)
		if j < 0 {
			return false
		}
		j += i
		end := j + len(id)
		if (j == 0 || !identByte(text[j-1])) && (end == len(text) || !identByte(text[end])) {
			return true
		}
		i = j + 1
	}
}

func identByte(c byte) bool {
	return c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}
