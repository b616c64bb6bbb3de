package inject

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Config is the configuration of `sidebox inject`. The CLI reads it from the
// SIDEBOX_INJECT_* variables (internal/config) and checks it with Validate.
type Config struct {
	// Addr is the HTTPS listen address (SIDEBOX_INJECT_ADDR, default ":8443").
	Addr string
	// TLSCert and TLSKey are the paths of the PEM serving certificate (with its
	// chain) and private key (SIDEBOX_INJECT_TLS_CERT, SIDEBOX_INJECT_TLS_KEY).
	// Both files are re-read when they change, so a renewed certificate is
	// served without a restart.
	TLSCert string
	TLSKey  string
	// Image is the sidecar image injected into pods that do not name their own
	// with the sidebox.io/image annotation (SIDEBOX_INJECT_IMAGE).
	Image string
	// Mode is the default kind of sidecar, "native" (an init container with
	// restartPolicy Always, Kubernetes >= 1.29) or "classic" (a regular
	// container); a pod chooses with the sidebox.io/native-sidecar annotation
	// (SIDEBOX_INJECT_MODE, default "native").
	Mode string
}

// Modes of Config.Mode.
const (
	ModeNative  = "native"
	ModeClassic = "classic"
)

// ConfigError is one invalid SIDEBOX_INJECT_* variable. It prints as
// `SIDEBOX_INJECT_IMAGE: must be set to the sidecar image ...`. The CLI exits with code 2 on it: find
// it with errors.As, or through its ConfigError method.
type ConfigError struct {
	Var     string
	Problem string
}

func (e *ConfigError) Error() string { return e.Var + ": " + e.Problem }

// ConfigError marks the error as a configuration error (exit code 2) for
// callers that test for interface{ ConfigError() bool }.
func (e *ConfigError) ConfigError() bool { return true }

// Validate checks every field and returns every problem, each a *ConfigError
// (joined with errors.Join when there are several).
func (c Config) Validate() error {
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, &ConfigError{Var: name, Problem: fmt.Sprintf(format, args...)})
	}
	if _, port, err := net.SplitHostPort(c.Addr); err != nil {
		bad("SIDEBOX_INJECT_ADDR", "must be host:port or :port, got %q", c.Addr)
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		bad("SIDEBOX_INJECT_ADDR", "must end in a port number 0-65535, got %q", c.Addr)
	}
	if c.TLSCert == "" {
		bad("SIDEBOX_INJECT_TLS_CERT", "must be set to the path of the PEM serving certificate")
	}
	if c.TLSKey == "" {
		bad("SIDEBOX_INJECT_TLS_KEY", "must be set to the path of the PEM private key")
	}
	if err := checkImage(c.Image); err != nil {
		bad("SIDEBOX_INJECT_IMAGE", "%v", err)
	}
	if c.Mode != ModeNative && c.Mode != ModeClassic {
		bad("SIDEBOX_INJECT_MODE", "must be native or classic, got %q", c.Mode)
	}
	return errors.Join(errs...)
}

// checkImage accepts any non-empty image reference without whitespace; the
// container runtime is the judge of the rest.
func checkImage(image string) error {
	if image == "" {
		return errors.New("must be set to the sidecar image to inject, e.g. ghcr.io/sidebox/sidebox:0.1.0")
	}
	if strings.ContainsFunc(image, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return fmt.Errorf("%q is not an image reference", image)
	}
	return nil
}
