package outbox_test

import (
	"context"
	"os"
	"testing"

	"github.com/sidebox/sidebox/internal/testenv"
	"github.com/sidebox/sidebox/outbox"
)

// The SQL recipe of trace_context.sql.example: a writer's SET LOCAL
// sidebox.traceparent (and tracestate) ends up in the row's headers, without
// overriding a traceparent of the row's own, and only in its transaction.
func TestTraceContextRecipe(t *testing.T) {
	db, _ := testenv.DB(t)
	testenv.Migrate(t, db, outbox.Migrate, "outbox")
	recipe, err := os.ReadFile("migrations/trace_context.sql.example")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(string(recipe)); err != nil {
		t.Fatalf("the recipe: %v", err)
	}
	const (
		tp    = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	)
	ctx := context.Background()
	conn, err := db.Conn(ctx) // one session: what a SET LOCAL leaves behind matters
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, c := range []struct {
		name    string
		set     []string // statements before the insert, in the writer's transaction
		headers string   // the insert's headers; "" leaves the column out
		want    string
	}{
		{"setting", []string{`SET LOCAL sidebox.traceparent = '` + tp + `'`, `SET LOCAL sidebox.tracestate = 'vendor=abc'`}, "",
			`{"traceparent": "` + tp + `", "tracestate": "vendor=abc"}`},
		{"after that transaction: nothing", nil, "", `{}`},
		{"merged with the row's headers", []string{`SELECT set_config('sidebox.traceparent', '` + tp + `', true)`}, `{"k": "v"}`,
			`{"k": "v", "traceparent": "` + tp + `"}`},
		{"the row's own traceparent wins", []string{`SET LOCAL sidebox.traceparent = '` + tp + `'`}, `{"traceparent": "` + other + `"}`,
			`{"traceparent": "` + other + `"}`},
		{"not a traceparent: ignored", []string{`SET LOCAL sidebox.traceparent = 'hello'`}, `{"k": 1}`, `{"k": 1}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			tx, err := conn.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = tx.Rollback() }()
			for _, s := range c.set {
				if _, err := tx.ExecContext(ctx, s); err != nil {
					t.Fatalf("%s: %v", s, err)
				}
			}
			insert := `INSERT INTO outbox (exchange, routing_key, payload) VALUES ('orders', 'order.created', '{}') RETURNING headers::text`
			args := []any{}
			if c.headers != "" {
				insert = `INSERT INTO outbox (exchange, routing_key, payload, headers) VALUES ('orders', 'order.created', '{}', $1) RETURNING headers::text`
				args = append(args, c.headers)
			}
			var got string
			if err := tx.QueryRowContext(ctx, insert, args...).Scan(&got); err != nil {
				t.Fatal(err)
			}
			var same bool
			if err := tx.QueryRowContext(ctx, `SELECT $1::jsonb = $2::jsonb`, got, c.want).Scan(&same); err != nil {
				t.Fatal(err)
			}
			if !same {
				t.Errorf("headers %s, want %s", got, c.want)
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
