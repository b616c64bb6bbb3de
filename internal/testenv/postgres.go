package testenv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Postgres is a private PostgreSQL server of one test, for fault tests: it can be
// stopped, killed and started again on the same port with the same data. Superuser
// postgres, trust authentication, 127.0.0.1 only. Its methods must be called from
// the test's goroutine.
type Postgres struct {
	bin  string              // directory holding initdb and postgres
	dir  string              // temporary root: data/ and postgres.log
	port int                 // TCP port on 127.0.0.1
	cred *syscall.Credential // user to run as; nil = the current one
	proc *process            // the postmaster; nil before the first start
	tls  *TLSFiles           // set by PostgresTLS: TLS only, with these files
}

// PostgresOption configures a private PostgreSQL server of [StartPostgres].
type PostgresOption func(*Postgres)

// PostgresTLS makes the server accept TLS connections only (ssl = on, non-TLS
// connections rejected by pg_hba.conf), with the server certificate of files; [Postgres.URL]
// then asks for sslmode=verify-full against files.CA.
func PostgresTLS(files *TLSFiles) PostgresOption {
	return func(p *Postgres) { p.tls = files }
}

// StartPostgres creates a cluster with initdb in a temporary directory and starts it
// on a free port; it is stopped and removed in t.Cleanup. It runs as the current user,
// or as the system user postgres when the test runs as root. fsync is off (a killed
// server keeps what it committed; a crashed machine would not).
func StartPostgres(t testing.TB, opts ...PostgresOption) *Postgres {
	t.Helper()
	bin, err := postgresBin()
	if err != nil {
		t.Fatalf("testenv: %v; %s", err, setupHint)
	}
	cred, err := serviceUser("postgres")
	if err != nil {
		t.Fatalf("testenv: %v; %s", err, setupHint)
	}
	dir, err := os.MkdirTemp("", "sidebox-pg-")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	p := &Postgres{bin: bin, dir: dir, cred: cred}
	for _, o := range opts {
		o(p)
	}
	t.Cleanup(func() { p.cleanup(t) })

	if cred != nil { // initdb, running as postgres, creates data/ in it
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatalf("testenv: %v", err)
		}
	}
	if p.port, err = freePort(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if err := p.initdb(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	p.Start(t)
	return p
}

// URL returns the URL of the server's postgres database: sslmode=disable, or with
// [PostgresTLS] sslmode=verify-full and sslrootcert naming the CA.
func (p *Postgres) URL() string {
	if p.tls != nil {
		return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=verify-full&sslrootcert=%s", p.port, url.QueryEscape(p.tls.CA))
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.port)
}

// Addr returns the server's host:port.
func (p *Postgres) Addr() string { return "127.0.0.1:" + strconv.Itoa(p.port) }

// Start starts the stopped server again on the same port and data directory and
// waits until it accepts connections. It does nothing if the server runs.
func (p *Postgres) Start(t testing.TB) {
	t.Helper()
	if p.running() {
		return
	}
	cmd := exec.Command(filepath.Join(p.bin, "postgres"), "-D", p.dataDir())
	cmd.Dir = p.dir // the postgres user may not enter the test's working directory
	proc, err := startProcess(cmd, filepath.Join(p.dir, "postgres.log"), syscall.SIGQUIT, p.cred)
	if err != nil {
		t.Fatalf("testenv: postgres: %v", err)
	}
	p.proc = proc
	if err := p.waitReady(60 * time.Second); err != nil {
		t.Fatalf("testenv: postgres on %s: %v\n--- postgres.log ---\n%s", p.Addr(), err, p.proc.logTail())
	}
}

// Stop shuts the server down ("fast" mode: clients are disconnected, the data is
// checkpointed) and waits until it has exited and released its port.
func (p *Postgres) Stop(t testing.TB) {
	t.Helper()
	p.halt(t, syscall.SIGINT, 30*time.Second)
}

// Kill shuts the server down in "immediate" mode, as in a crash: no checkpoint, the
// next Start recovers from the WAL. It waits until the port is released.
func (p *Postgres) Kill(t testing.TB) {
	t.Helper()
	p.halt(t, syscall.SIGQUIT, 10*time.Second)
}

// Restart stops the server and starts it again.
func (p *Postgres) Restart(t testing.TB) {
	t.Helper()
	p.Stop(t)
	p.Start(t)
}

func (p *Postgres) halt(t testing.TB, sig syscall.Signal, grace time.Duration) {
	t.Helper()
	if !p.running() {
		return
	}
	if err := p.proc.stop(sig, grace); err != nil {
		t.Fatalf("testenv: stop postgres: %v", err)
	}
}

func (p *Postgres) running() bool { return p.proc != nil && !p.proc.exited() }

func (p *Postgres) dataDir() string { return filepath.Join(p.dir, "data") }

// initdb creates the cluster and appends the test settings to postgresql.conf.
func (p *Postgres) initdb() error {
	cmd := exec.Command(filepath.Join(p.bin, "initdb"), "-D", p.dataDir(),
		"-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync")
	cmd.Dir = p.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w\n%s", err, out)
	}
	conf := fmt.Sprintf(`
# sidebox testenv
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = ''
max_connections = 200
fsync = off
full_page_writes = off
`, p.port)
	f, err := os.OpenFile(filepath.Join(p.dataDir(), "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("postgresql.conf: %w", err)
	}
	if _, err := f.WriteString(conf); err != nil {
		_ = f.Close()
		return fmt.Errorf("postgresql.conf: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("postgresql.conf: %w", err)
	}
	if p.tls != nil {
		return p.configureTLS()
	}
	return nil
}

// waitReady polls until the server accepts a connection, fails early if it exits.
func (p *Postgres) waitReady(timeout time.Duration) error {
	db, err := sql.Open("postgres", p.URL()+"&connect_timeout=2")
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer db.Close()
	return p.proc.waitUntil(timeout, 20*time.Millisecond, "accepting connections", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return db.PingContext(ctx)
	})
}

// cleanup kills the server and removes its directory.
func (p *Postgres) cleanup(t testing.TB) {
	if p.running() {
		if err := p.proc.stop(syscall.SIGQUIT, 10*time.Second); err != nil {
			t.Errorf("testenv: stop postgres: %v", err)
		}
	}
	if err := os.RemoveAll(p.dir); err != nil {
		t.Errorf("testenv: remove %s: %v", p.dir, err)
	}
}

// postgresBin finds the directory of initdb and postgres: the newest Debian/Ubuntu
// /usr/lib/postgresql/<version>/bin, else initdb on PATH.
func postgresBin() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgVersion(dirs[i]) > pgVersion(dirs[j]) })
	for _, d := range dirs {
		if usable(filepath.Join(d, "initdb")) && usable(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	if initdb, err := exec.LookPath("initdb"); err == nil {
		d := filepath.Dir(initdb)
		if usable(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", errors.New("PostgreSQL server binaries (initdb, postgres) not found in /usr/lib/postgresql/*/bin or on PATH")
}

// pgVersion returns the major version in /usr/lib/postgresql/<version>/bin, or 0.
func pgVersion(binDir string) int {
	v, _ := strconv.Atoi(strings.SplitN(filepath.Base(filepath.Dir(binDir)), ".", 2)[0])
	return v
}

// usable reports whether path is an executable file.
func usable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// configureTLS copies the server's certificate and key into the data directory (the
// key readable by the server's user only, as PostgreSQL demands), turns ssl on and
// rejects connections without TLS.
func (p *Postgres) configureTLS() error {
	uid, gid := -1, -1
	if p.cred != nil {
		uid, gid = int(p.cred.Uid), int(p.cred.Gid)
	}
	if err := copyFile(p.tls.ServerCert, filepath.Join(p.dataDir(), "server.crt"), 0o644, uid, gid); err != nil {
		return err
	}
	if err := copyFile(p.tls.ServerKey, filepath.Join(p.dataDir(), "server.key"), 0o600, uid, gid); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(p.dataDir(), "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("postgresql.conf: %w", err)
	}
	if _, err := f.WriteString("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"); err != nil {
		_ = f.Close()
		return fmt.Errorf("postgresql.conf: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("postgresql.conf: %w", err)
	}
	hba := filepath.Join(p.dataDir(), "pg_hba.conf")
	b, err := os.ReadFile(hba)
	if err != nil {
		return fmt.Errorf("pg_hba.conf: %w", err)
	}
	// The first matching line wins: no TLS, no entry.
	b = append([]byte("hostnossl all all all reject\n"), b...)
	if err := os.WriteFile(hba, b, 0o600); err != nil {
		return fmt.Errorf("pg_hba.conf: %w", err)
	}
	return nil
}
