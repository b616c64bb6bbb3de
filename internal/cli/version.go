package cli

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// Set at build time (make build does):
//
//	-ldflags '-X github.com/sidebox/sidebox/internal/cli.version=v1.2.3 -X github.com/sidebox/sidebox/internal/cli.commit=abc1234
//	          -X github.com/sidebox/sidebox/internal/cli.buildDate=2026-01-02T03:04:05Z'
//
// Empty values fall back to the module's build information.
var (
	version   string
	commit    string
	buildDate string
)

// buildVersion returns the version and commit of this binary: the linker flags, else
// the build information (module version, VCS revision), else "dev" and "unknown".
func buildVersion() (v, c string) {
	v, c = version, commit
	if info, ok := debug.ReadBuildInfo(); ok {
		if v == "" && info.Main.Version != "" && info.Main.Version != "(devel)" {
			v = info.Main.Version
		}
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && c == "" {
				c = s.Value
				if len(c) > 12 {
					c = c[:12]
				}
			}
		}
	}
	if v == "" {
		v = "dev"
	}
	if c == "" {
		c = "unknown"
	}
	return v, c
}

// printVersion writes one field a line, "name: value", for people and for scripts
// (sidebox version | awk '/^version:/ {print $2}').
func printVersion(w io.Writer) error {
	v, c := buildVersion()
	built := buildDate
	if built == "" {
		built = "unknown (built without make; make build and make install set it)"
	}
	_, err := fmt.Fprintf(w, "version:    %s\ncommit:     %s\ngo:         %s\nbuilt:      %s\nplatform:   %s/%s\n",
		v, c, runtime.Version(), built, runtime.GOOS, runtime.GOARCH)
	return err
}
