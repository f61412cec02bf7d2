package main

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the child die with its parent, so that `sluice up`
// killed with SIGKILL leaves nothing running.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
