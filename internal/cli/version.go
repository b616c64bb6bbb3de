package cli

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// Set at build time:
//
//	-ldflags '-X github.com/sidebox/sidebox/internal/cli.version=v1.2.3 -X github.com/sidebox/sidebox/internal/cli.commit=abc1234'
//
// Empty values fall back to the module's build information.
var (
	version string
	commit  string
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

func printVersion(w io.Writer) error {
	v, c := buildVersion()
	_, err := fmt.Fprintf(w, "sidebox %s (commit %s, %s)\n", v, c, runtime.Version())
	return err
}
