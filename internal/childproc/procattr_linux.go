package childproc

import (
	"os/exec"
	"syscall"
)

// SetDeathSignal makes the child die with its parent, so that `sluice up`
// killed with SIGKILL leaves nothing running.
func SetDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// SetOwnGroup is SetDeathSignal, and puts the child in a process group of
// its own: a Ctrl-C in the terminal (SIGINT to the foreground group) then
// reaches `sluice up` alone, which stops its processes in order (pipelines
// first, coordinators once the stream drained), instead of every process at
// once and redis-server with them.
func SetOwnGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}
