//go:build unix && !linux

package main

import "syscall"

func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true} // no Ctrl-C from the terminal: the demo stops the child
}
