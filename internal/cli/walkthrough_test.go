package cli_test

import (
	"context"
	"database/sql"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sidebox/sidebox/internal/testenv"
)

// walkthroughBlock matches a README block marked to run in the walkthrough test.
var walkthroughBlock = regexp.MustCompile("(?s)<!-- walkthrough -->\\s*```(sh|sql)\\n(.*?)```")

// walkthroughScript turns the README's marked blocks into one bash script: shell
// blocks as they are, SQL blocks piped into psql on SIDEBOX_DATABASE_URL.
func walkthroughScript(t *testing.T, readme string) string {
	t.Helper()
	blocks := walkthroughBlock.FindAllStringSubmatch(readme, -1)
	if len(blocks) < 3 {
		t.Fatalf("README has %d blocks marked <!-- walkthrough -->, want the walkthrough's", len(blocks))
	}
	var b strings.Builder
	b.WriteString("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n")
	for _, m := range blocks {
		if m[1] == "sql" {
			b.WriteString("psql -X -q -v ON_ERROR_STOP=1 \"$SIDEBOX_DATABASE_URL\" <<'WALKTHROUGH_SQL'\n" + m[2] + "WALKTHROUGH_SQL\n")
			continue
		}
		b.WriteString(m[2])
	}
	return b.String()
}

// The README's walkthrough runs as written, from an empty database server (it creates
// its role and database) and an empty broker (a private RabbitMQ), through a message
// stored in the inbox. Only the names the shared test servers need unique are
// replaced, each checked to be there.
func TestReadmeWalkthrough(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("psql"); err != nil {
		t.Skip("psql is not installed: " + err.Error())
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	server, err := url.Parse(testenv.DatabaseURL(t))
	if err != nil || server.Scheme == "" {
		t.Skip("the test database URL is not a postgres:// URL; the walkthrough needs its host and port")
	}
	host, port, _ := net.SplitHostPort(server.Host)
	mq := testenv.StartRabbitMQ(t) // an empty broker
	httpPort := freePort(t)
	role, db := testenv.Name(t, "walk_app"), testenv.Name(t, "walk_orders")

	script := walkthroughScript(t, string(readme))
	for _, r := range []struct{ old, new string }{
		{"CREATE ROLE app ", "CREATE ROLE " + role + " "},
		{"CREATE DATABASE orders OWNER app", "CREATE DATABASE " + db + " OWNER " + role},
		{"postgres://app:secret@localhost:5432/orders?", "postgres://" + role + ":secret@" + net.JoinHostPort(host, port) + "/" + db + "?"},
		{"amqp://guest:guest@localhost:5672/", mq.URL()},
		{"localhost:9719", "127.0.0.1:" + strconv.Itoa(httpPort)},
	} {
		if !strings.Contains(script, r.old) {
			t.Fatalf("the walkthrough no longer contains %q; update this test with it", r.old)
		}
		script = strings.ReplaceAll(script, r.old, r.new)
	}
	t.Cleanup(func() { dropWalkthrough(t, server, db, role) })

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir = dir
	cmd.Env = env("PATH="+filepath.Dir(binary)+string(os.PathListSeparator)+os.Getenv("PATH"),
		"PGHOST="+host, "PGPORT="+port, "PGUSER="+server.User.Username(), "PGDATABASE=postgres",
		"SIDEBOX_HTTP_ADDR=127.0.0.1:"+strconv.Itoa(httpPort), "SIDEBOX_LOG_FORMAT=console")
	out, err := cmd.CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "sidebox.log"))
		t.Fatalf("walkthrough: %v\nscript:\n%s\noutput:\n%s\nsidebox.log:\n%s", err, script, out, log)
	}
	if !strings.Contains(string(out), "inbox (table inbox)") {
		t.Errorf("walkthrough ended without sidebox status:\n%s", out)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// dropWalkthrough drops what the walkthrough created on the shared server.
func dropWalkthrough(t *testing.T, server *url.URL, db, role string) {
	u := *server
	u.Path = "/postgres"
	admin, err := sql.Open("postgres", u.String())
	if err != nil {
		t.Error(err)
		return
	}
	defer admin.Close()
	for _, q := range []string{"DROP DATABASE IF EXISTS " + db + " WITH (FORCE)", "DROP ROLE IF EXISTS " + role} {
		if _, err := admin.Exec(q); err != nil {
			t.Errorf("%s: %v", q, err)
		}
	}
}
