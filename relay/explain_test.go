package relay

import (
	"testing"
	"time"
)

func TestWarnLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newWarnLimiter(time.Minute, func() time.Time { return now })
	step := func(ex, rk string, wantOK bool, wantHeld int) {
		t.Helper()
		ok, held := l.allow(ex, rk)
		if ok != wantOK || held != wantHeld {
			t.Errorf("allow(%q, %q) at %s = %v, %d; want %v, %d", ex, rk, now.Format(time.TimeOnly), ok, held, wantOK, wantHeld)
		}
	}
	step("orders", "order.created", true, 0)
	step("orders", "order.created", false, 0)
	step("orders", "order.paid", true, 0) // another routing key
	step("billing", "order.created", true, 0)
	now = now.Add(30 * time.Second)
	step("orders", "order.created", false, 0)
	now = now.Add(30 * time.Second)
	step("orders", "order.created", true, 2) // the interval passed: the two held back are counted
	step("orders", "order.created", false, 0)

	// Memory is bounded: stale pairs are forgotten when the map is full.
	for i := range maxWarnKeys {
		l.allow("x", string(rune(i)))
	}
	now = now.Add(time.Hour)
	step("new", "key", true, 0)
	if len(l.keys) != 1 {
		t.Errorf("%d pairs remembered after forgetting, want 1", len(l.keys))
	}
}
