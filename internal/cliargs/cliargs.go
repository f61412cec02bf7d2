// Package cliargs reorders a sluice command line for urfave/cli v2, which
// stops reading a command's flags at its first positional argument.
package cliargs

import (
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"
)

// FlagsFirst moves a command's flags before its positional arguments, so
// that `sluice cooldown ibkr --for 5m` works: urfave/cli v2 stops reading
// flags at the first argument. Everything after "--" stays as it is.
func FlagsFirst(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	out := []string{args[0]}
	rest := args[1:]
	flags := app.Flags
	cmds := app.Commands
	for {
		// Leading flags of this level.
		for len(rest) > 0 && isFlag(rest[0]) {
			n := flagArity(flags, rest[0])
			n = min(n, len(rest))
			out, rest = append(out, rest[:n]...), rest[n:]
		}
		if len(rest) == 0 {
			return out
		}
		var cmd *cli.Command
		for _, c := range cmds {
			if c.HasName(rest[0]) {
				cmd = c
			}
		}
		if cmd == nil { // positionals of the last command: move its flags first
			var pos []string
			for len(rest) > 0 {
				switch {
				case rest[0] == "--":
					return append(append(out, "--"), append(pos, rest[1:]...)...)
				case isFlag(rest[0]):
					n := min(flagArity(flags, rest[0]), len(rest))
					out, rest = append(out, rest[:n]...), rest[n:]
				default:
					pos, rest = append(pos, rest[0]), rest[1:]
				}
			}
			return append(out, pos...)
		}
		out, rest = append(out, rest[0]), rest[1:]
		flags, cmds = cmd.Flags, cmd.Subcommands
	}
}

// isFlag tells a flag from a positional argument; "-1" is a number.
func isFlag(arg string) bool {
	if !strings.HasPrefix(arg, "-") || arg == "-" || arg == "--" {
		return false
	}
	_, err := strconv.ParseFloat(arg, 64)
	return err != nil
}

// flagArity says how many arguments the flag arg uses: 1 for a bool flag,
// for --name=value or an unknown flag; 2 for a flag that takes a value.
func flagArity(flags []cli.Flag, arg string) int {
	name := strings.TrimLeft(arg, "-")
	if strings.Contains(name, "=") {
		return 1
	}
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				if _, isBool := f.(*cli.BoolFlag); isBool {
					return 1
				}
				return 2
			}
		}
	}
	return 1
}
