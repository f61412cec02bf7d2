package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/pkg/config"
)

func (a *app) configCmd() *cli.Command {
	var asJSON bool
	return &cli.Command{
		Name:  "config",
		Usage: "show the effective configuration",
		Subcommands: []*cli.Command{{
			Name:  "print",
			Usage: "print every setting, its value and where it came from",
			Description: `Precedence: flags > environment > YAML file (--config or SLUICE_CONFIG) >
defaults. The seed's names work: MDP_FB_ENABLE_FEEDBACK, MDP_FB_PROVIDER_NAME,
MDP_RATE_<PROVIDER>_CAPACITY, MDP_RATE_<PROVIDER>_REFILL_RATE, ... The
configuration is validated: a bad value is an error naming the key, the value
and its source.

Examples:
   sluice --config sluice.yaml config print
   MDP_RATE_IBKR_CAPACITY=100 sluice config print --json`,
			Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON", Destination: &asJSON}},
			Action: func(c *cli.Context) error {
				cfg, err := a.config(c, nil)
				if err != nil {
					return err
				}
				if asJSON {
					out := map[string]config.Value{}
					for _, v := range cfg.Values() {
						out[v.Key] = v
					}
					enc := json.NewEncoder(a.stdout)
					enc.SetIndent("", "  ")
					return enc.Encode(out)
				}
				tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "KEY\tVALUE\tFROM")
				for _, v := range cfg.Values() {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", v.Key, v.Value, v.Source)
				}
				return tw.Flush()
			},
		}},
	}
}
