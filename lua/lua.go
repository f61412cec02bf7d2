// Package lua holds sluice's Redis scripts, the cross-language contract of the
// shared limiter and of the write stream's consumers. Each script is one file; lib.lua is a prelude of helpers that
// is prepended to every script, so the text a client must load (EVAL/EVALSHA)
// is Source(name), not the file alone. docs/lua.md documents KEYS, ARGV,
// replies and the key schema; each file repeats its own part at the top.
package lua

import (
	"embed"
	"fmt"
)

//go:embed *.lua
var files embed.FS

// Names lists the scripts, without the .lua suffix, in a stable order: the
// limiter's, then the write stream consumers' (refuse, forget).
var Names = []string{"register", "acquire", "set_scale", "annotate", "breaker", "cooldown", "heartbeat", "status", "pressure", "lease", "refund", "set_rules", "permit", "set_lanes", "refuse", "forget"}

// Source returns the complete text of the named script: lib.lua followed by
// <name>.lua. It panics on a name not in Names, a programming error.
func Source(name string) string {
	lib, err := files.ReadFile("lib.lua")
	if err != nil {
		panic(err)
	}
	body, err := files.ReadFile(name + ".lua")
	if err != nil {
		panic(fmt.Sprintf("lua: no script %q", name))
	}
	return string(lib) + "\n" + string(body)
}
