package main

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// printer writes the demo's output. On a terminal the progress line is one line,
// rewritten in place, with event lines scrolling above it; elsewhere (CI, a pipe)
// progress lines are printed once a second, each a line of its own.
type printer struct {
	mu       sync.Mutex
	f        *os.File
	tty      bool
	progress string // the progress line on screen, tty only
}

func newPrinter(f *os.File) *printer {
	_, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	return &printer{f: f, tty: err == nil}
}

// say prints a line that stays.
func (p *printer) say(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.progress != "" {
		fmt.Fprint(p.f, "\r\033[K")
	}
	fmt.Fprintf(p.f, format+"\n", args...)
	if p.progress != "" {
		fmt.Fprint(p.f, p.progress)
	}
}

// update shows the progress line.
func (p *printer) update(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.tty {
		fmt.Fprintln(p.f, line)
		return
	}
	// A line longer than the terminal would wrap, and \r would rewrite only its end.
	if ws, err := unix.IoctlGetWinsize(int(p.f.Fd()), unix.TIOCGWINSZ); err == nil && ws.Col > 1 {
		if r := []rune(line); len(r) >= int(ws.Col) {
			line = string(r[:ws.Col-2]) + "…"
		}
	}
	p.progress = line
	fmt.Fprint(p.f, "\r\033[K"+line)
}

// keep ends the progress line, leaving its last state on screen.
func (p *printer) keep() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.progress != "" {
		fmt.Fprintln(p.f)
	}
	p.progress = ""
}
