package inject

import (
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
// `SIDEBOX_INJECT_IMAGE: is required`. The CLI exits with code 2 on it: find
// it with errors.As, or through its ConfigError method.
type ConfigError struct {
	Var     string
	Problem string
}

func (e *ConfigError) Error() string { return e.Var + ": " + e.Problem }

// ConfigError marks the error as a configuration error (exit code 2) for
// callers that test for interface{ ConfigError() bool }.
func (e *ConfigError) ConfigError() bool { return true }

// Validate checks every field and returns the first problem as a *ConfigError.
func (c Config) Validate() error {
	_, port, err := net.SplitHostPort(c.Addr)
	if err != nil {
		return &ConfigError{Var: "SIDEBOX_INJECT_ADDR", Problem: fmt.Sprintf("want host:port or :port, got %q", c.Addr)}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return &ConfigError{Var: "SIDEBOX_INJECT_ADDR", Problem: fmt.Sprintf("port must be a number from 0 to 65535, got %q", port)}
	}
	if c.TLSCert == "" {
		return &ConfigError{Var: "SIDEBOX_INJECT_TLS_CERT", Problem: "is required: the path of the PEM serving certificate"}
	}
	if c.TLSKey == "" {
		return &ConfigError{Var: "SIDEBOX_INJECT_TLS_KEY", Problem: "is required: the path of the PEM private key"}
	}
	if err := checkImage(c.Image); err != nil {
		return &ConfigError{Var: "SIDEBOX_INJECT_IMAGE", Problem: err.Error()}
	}
	if c.Mode != ModeNative && c.Mode != ModeClassic {
		return &ConfigError{Var: "SIDEBOX_INJECT_MODE", Problem: fmt.Sprintf("must be native or classic, got %q", c.Mode)}
	}
	return nil
}

// checkImage accepts any non-empty image reference without whitespace; the
// container runtime is the judge of the rest.
func checkImage(image string) error {
	if image == "" {
		return fmt.Errorf("is required: the sidecar image to inject, e.g. ghcr.io/sidebox/sidebox:0.1.0")
	}
	if strings.ContainsFunc(image, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return fmt.Errorf("%q is not an image reference", image)
	}
	return nil
}
