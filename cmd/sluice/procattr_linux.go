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

// setOwnGroup is setDeathSignal, and puts the child in a process group of
// its own: a Ctrl-C in the terminal (SIGINT to the foreground group) then
// reaches `sluice up` alone, which stops its processes in order (pipelines
// first, coordinators once the stream drained), instead of every process at
// once and redis-server with them.
func setOwnGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}
