package deploy_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sidebox/sidebox/internal/testenv"
)

// podmanRun are the options `make image` runs the image with (Makefile IMAGE_RUN and
// the limits below the hard ones).
var podmanRun = []string{"--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
	"run", "--rm", "--net", "host", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"}

// The image of deploy/Containerfile (make image) runs `version` and `migrate up`
// against the test database. Skipped, saying why, where podman or a runtime is missing.
func TestImageRunsVersionAndMigrate(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a container image")
	}
	podman, err := exec.LookPath("podman")
	if err != nil {
		t.Skip("podman is not installed (apt-get install podman runc): the image cannot be built here")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc is not installed (apt-get install runc): crun cannot run containers in this sandbox")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", filepath.Join(dir, "sidebox"), "github.com/sidebox/sidebox/cmd/sidebox")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	certs, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		t.Skip("no CA certificates at /etc/ssl/certs/ca-certificates.crt to put into the image")
	}
	if err := os.WriteFile(filepath.Join(dir, "ca-certificates.crt"), certs, 0o644); err != nil {
		t.Fatal(err)
	}
	image := "localhost/" + testenv.Name(t, "sidebox_image_test") + ":test"
	if out, err := exec.CommandContext(ctx, podman, "--storage-driver", "vfs", "build", "-q", "-f", "Containerfile", "-t", image, dir).CombinedOutput(); err != nil {
		t.Fatalf("podman build: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command(podman, "--storage-driver", "vfs", "rmi", "-f", image).Run() })

	out, err := exec.CommandContext(ctx, podman, append(podmanRun, image, "version")...).CombinedOutput()
	if err != nil {
		if s := string(out); strings.Contains(s, "setrlimit") || strings.Contains(s, "cgroups") || strings.Contains(s, "OCI runtime") {
			t.Skipf("the image was built, but no container runtime works here: %s", strings.TrimSpace(s))
		}
		t.Fatalf("podman run version: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "version:") || !strings.Contains(string(out), "built:") {
		t.Errorf("version in the image printed:\n%s", out)
	}
	dsn := testenv.DatabaseURL(t)
	out, err = exec.CommandContext(ctx, podman, append(podmanRun, "-e", "SIDEBOX_DATABASE_URL="+dsn, image, "migrate", "up")...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "applied 0001_create_outbox") {
		t.Errorf("podman run migrate up: %v\n%s", err, out)
	}
}
