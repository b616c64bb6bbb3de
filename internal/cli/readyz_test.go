package cli_test

import (
	"testing"

	"github.com/sidebox/sidebox/internal/testenv"
)

// With its queue missing, the inbox's /readyz answer names the cause and the fix, not
// only "not consuming".
func TestReadyzNamesMissingQueue(t *testing.T) {
	t.Parallel()
	dsn := testenv.DatabaseURL(t)
	queue := testenv.Name(t, "cli_missing_q")
	vars := []string{
		"SIDEBOX_DATABASE_URL=" + withPassword(t, dsn),
		"SIDEBOX_AMQP_URL=" + testenv.AMQPURL(t),
		"SIDEBOX_INBOX_QUEUE=" + queue,
	}
	if r := run(t, vars, "migrate", "up"); r.code != 0 {
		t.Fatal(r)
	}
	d := start(t, vars, "inbox")
	d.waitFor(t, "/readyz", 503, `queue \"`+queue+`\" does not exist; declare it, or set SIDEBOX_INBOX_DECLARE=true`)
}
