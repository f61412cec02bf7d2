//go:build !linux

package childproc

import "os/exec"

// SetDeathSignal does nothing here: only Linux has a parent-death signal.
func SetDeathSignal(*exec.Cmd) {}

// SetOwnGroup does nothing here: see the Linux version.
func SetOwnGroup(*exec.Cmd) {}
