package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/lua"
)

func (a *app) scriptsCmd() *cli.Command {
	return &cli.Command{
		Name:  "scripts",
		Usage: "the Redis Lua scripts, for clients in other languages",
		Subcommands: []*cli.Command{{
			Name:      "dump",
			Usage:     "write each complete script (prelude included) to DIR/<name>.lua",
			ArgsUsage: "DIR",
			Description: `Writes the exact text sluice loads into Redis, one file per script, so a
client in another language (redis-py's register_script, ...) can run the same
scripts on the same keys. docs/lua.md documents KEYS, ARGV and replies.

Example:
   sluice scripts dump ./sluice-lua`,
			Action: func(c *cli.Context) error {
				argv, err := args(c, 1, "DIR")
				if err != nil {
					return err
				}
				if err := os.MkdirAll(argv[0], 0o755); err != nil {
					return usagef("scripts dump: DIR=%s: %v", argv[0], errors.Unwrap(err))
				}
				for _, name := range lua.Names {
					path := filepath.Join(argv[0], name+".lua")
					if err := os.WriteFile(path, []byte(lua.Source(name)), 0o644); err != nil {
						return err
					}
					fmt.Fprintln(a.stdout, path)
				}
				return nil
			},
		}},
	}
}
