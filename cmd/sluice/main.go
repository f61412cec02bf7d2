// Command sluice runs and inspects sluice: the demo of the whole loop, the
// services, status, operator overrides. See `sluice --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdout, os.Stderr, os.Environ())
	stop()
	os.Exit(code)
}
