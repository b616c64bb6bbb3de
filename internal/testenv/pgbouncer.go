package testenv

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// PgBouncer pool modes.
const (
	PoolTransaction = "transaction"
	PoolSession     = "session"
)

// PgBouncer is a private PgBouncer of one test in front of a PostgreSQL server. Create
// it with [StartPgBouncer].
type PgBouncer struct {
	dir  string
	port int
	proc *process
}

// StartPgBouncer starts Debian's pgbouncer on a free port of 127.0.0.1 with its own
// configuration in a temporary directory, in front of the server of databaseURL (a URL
// or key=value DSN as [DatabaseURL] returns; trust authentication), pooling every
// database in mode (PoolTransaction or PoolSession). settings are added to the
// [pgbouncer] section as they are ("ignore_startup_parameters = ..."). It is killed
// and its directory removed in t.Cleanup. It runs as the system user postgres when the
// test runs as root (pgbouncer refuses root).
func StartPgBouncer(t testing.TB, databaseURL, mode string, settings ...string) *PgBouncer {
	t.Helper()
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		for _, p := range []string{"/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"} {
			if usable(p) {
				bin, err = p, nil
				break
			}
		}
	}
	if err != nil {
		t.Fatalf("testenv: pgbouncer not found; %s", setupHint)
	}
	host, port, user, err := serverOf(databaseURL)
	if err != nil {
		t.Fatalf("testenv: StartPgBouncer: %v", err)
	}
	cred, err := serviceUser("postgres")
	if err != nil {
		t.Fatalf("testenv: %v; %s", err, setupHint)
	}
	dir, err := os.MkdirTemp("", "sidebox-pgbouncer-")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	b := &PgBouncer{dir: dir}
	t.Cleanup(func() { b.cleanup(t) })
	if b.port, err = freePort(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	conf := fmt.Sprintf(`[databases]
* = host=%s port=%s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = %s
max_client_conn = 500
default_pool_size = 20
server_lifetime = 3600
server_idle_timeout = 600
`, host, port, b.port, filepath.Join(dir, "userlist.txt"), mode)
	for _, s := range settings {
		conf += s + "\n"
	}
	files := map[string]string{
		"pgbouncer.ini": conf,
		"userlist.txt":  fmt.Sprintf("%q \"\"\n", user),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatalf("testenv: %v", err)
		}
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatalf("testenv: %v", err)
		}
	}
	cmd := exec.Command(bin, filepath.Join(dir, "pgbouncer.ini"))
	cmd.Dir = dir
	b.proc, err = startProcess(cmd, filepath.Join(dir, "pgbouncer.log"), syscall.SIGKILL, cred)
	if err != nil {
		t.Fatalf("testenv: pgbouncer: %v", err)
	}
	if err := b.waitListening(30 * time.Second); err != nil {
		t.Fatalf("testenv: pgbouncer on %s: %v\n--- pgbouncer.log ---\n%s", b.Addr(), err, b.proc.logTail())
	}
	return b
}

// Addr returns PgBouncer's host:port.
func (b *PgBouncer) Addr() string { return "127.0.0.1:" + strconv.Itoa(b.port) }

// URL returns databaseURL (a URL or key=value DSN of the server behind PgBouncer) with
// its host and port replaced by PgBouncer's.
func (b *PgBouncer) URL(databaseURL string) string {
	if u, err := url.Parse(databaseURL); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		u.Host = b.Addr()
		return u.String()
	}
	// key=value form: a later key overrides an earlier one.
	return strings.TrimSpace(databaseURL) + " host=127.0.0.1 port=" + strconv.Itoa(b.port)
}

// Log returns the end of PgBouncer's log, for failure messages.
func (b *PgBouncer) Log() string { return b.proc.logTail() }

// waitListening waits until PgBouncer accepts TCP connections, failing early if it
// exits.
func (b *PgBouncer) waitListening(timeout time.Duration) error {
	return b.proc.waitUntil(timeout, 20*time.Millisecond, "listening", func() error {
		c, err := net.DialTimeout("tcp", b.Addr(), time.Second)
		if err == nil {
			_ = c.Close()
		}
		return err
	})
}

func (b *PgBouncer) cleanup(t testing.TB) {
	if b.proc != nil {
		if err := b.proc.stop(syscall.SIGKILL, 10*time.Second); err != nil {
			t.Errorf("testenv: stop pgbouncer: %v", err)
		}
	}
	if err := os.RemoveAll(b.dir); err != nil {
		t.Errorf("testenv: remove %s: %v", b.dir, err)
	}
}

// serverOf returns the host, port and user of a lib/pq URL or key=value DSN.
func serverOf(dsn string) (host, port, user string, err error) {
	host, port, user = "127.0.0.1", "5432", "postgres"
	if u, perr := url.Parse(dsn); perr == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		if h := u.Hostname(); h != "" {
			host = h
		}
		if p := u.Port(); p != "" {
			port = p
		}
		if n := u.User.Username(); n != "" {
			user = n
		}
		return host, port, user, nil
	}
	kv := map[string]string{}
	for _, f := range strings.Fields(dsn) {
		if k, v, ok := strings.Cut(f, "="); ok {
			kv[k] = strings.Trim(v, "'")
		}
	}
	if len(kv) == 0 {
		return "", "", "", fmt.Errorf("cannot read host and port from %s", Redacted(dsn))
	}
	for k, dst := range map[string]*string{"host": &host, "port": &port, "user": &user} {
		if v := kv[k]; v != "" {
			*dst = v
		}
	}
	return host, port, user, nil
}

// PgBouncerVersion returns the version pgbouncer --version prints ("1.18.0"), or "".
func PgBouncerVersion() string {
	out, err := exec.Command("pgbouncer", "--version").Output()
	if err != nil {
		return ""
	}
	f := strings.Fields(string(out))
	if len(f) >= 2 {
		return f[1]
	}
	return ""
}
