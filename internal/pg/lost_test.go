package pg

import (
	"errors"
	"fmt"
	"testing"
)

// stateErr is a driver's error with a SQLSTATE, as lib/pq's and pgx's are.
type stateErr struct{ code, msg string }

func (e stateErr) Error() string    { return e.msg }
func (e stateErr) SQLState() string { return e.code }

// A lost prepared statement is recognised by its SQLSTATE, whatever the driver.
func TestLostStatement(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{stateErr{"26000", `prepared statement "1" does not exist`}, true},
		{fmt.Errorf("claim: %w", stateErr{"42P05", `prepared statement "1" already exists`}), true},
		{stateErr{"08P01", `bind message supplies 3 parameters, but prepared statement "1" requires 11`}, true},
		{stateErr{"08P01", "invalid message format"}, false},
		{stateErr{"23505", "duplicate key"}, false},
		{errors.New(`prepared statement "1" does not exist`), false},
	} {
		if got := lostStatement(c.err); got != c.want {
			t.Errorf("lostStatement(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
