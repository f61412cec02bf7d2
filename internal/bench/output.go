package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
)

// Report is a whole `sluice bench` run: it measures every workload of cfg
// (Measure), sums the runs up, measures the Redis memory of one provider
// and writes the tables to w, or with asJSON every run, the summaries and
// the memory as one JSON document.
func Report(ctx context.Context, cfg Config, w io.Writer, asJSON bool) error {
	runs, err := Measure(ctx, cfg)
	if err != nil {
		return err
	}
	sums := Summarize(runs)
	mem, err := MeasureMemory(ctx, cfg.Client)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"runs": runs, "summaries": sums, "memory_per_provider": mem})
	}
	Print(w, sums)
	fmt.Fprintf(w, "\nRedis memory per provider, one replica registered (MEMORY USAGE): %d bytes %v; shared by all providers: %v\n",
		mem.Total, mem.Keys, mem.Shared)
	return nil
}

// ReportPropagation measures propagation (MeasurePropagation) and writes
// the result to w, as one JSON line with asJSON.
func ReportPropagation(ctx context.Context, cfg PropagationConfig, w io.Writer, asJSON bool) error {
	p, err := MeasurePropagation(ctx, cfg)
	if err != nil {
		return err
	}
	if asJSON {
		return json.NewEncoder(w).Encode(p)
	}
	fmt.Fprint(w, p)
	return nil
}
