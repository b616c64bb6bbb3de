package relay

import (
	"context"
	"testing"
	"time"
)

// Polled wake-ups: every pollMin while rows came within pollActive, then doubling up
// to the poll interval, never past the next due row.
func TestPollWait(t *testing.T) {
	d := &dispatcher{r: &Relay{cfg: Config{PollInterval: 200 * time.Millisecond}}}
	ctx := context.Background()
	d.foundAt = time.Now()
	for range 3 {
		if w := d.pollWait(ctx, 0); w != pollMin {
			t.Fatalf("right after rows: %v, want %v", w, pollMin)
		}
	}
	d.foundAt = time.Now().Add(-2 * pollActive)
	var got []time.Duration
	for range 8 {
		got = append(got, d.pollWait(ctx, 0))
	}
	want := []time.Duration{10, 20, 40, 80, 160, 200, 200, 200}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("idle sleeps %v, want %v ms", got, want)
		}
	}
	if w := d.pollWait(ctx, 3*time.Millisecond); w != 3*time.Millisecond {
		t.Errorf("with a row due in 3ms: %v", w)
	}
}
