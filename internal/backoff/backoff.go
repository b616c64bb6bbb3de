// Package backoff computes capped exponential delays with jitter, for reconnect loops
// and for the retry schedule of failed messages.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Policy is a capped exponential backoff: Base, 2×Base, 4×Base ... up to Max, each
// delay drawn uniformly from [d/2, d] ("equal jitter") so that many clients that failed
// together do not retry together.
type Policy struct {
	Base time.Duration
	Max  time.Duration
}

// Delay returns the delay before retry number attempt (1 for the first retry).
func (p Policy) Delay(attempt int) time.Duration {
	d := p.Ceiling(attempt)
	half := d / 2
	if half <= 0 {
		return d
	}
	return half + rand.N(d-half+1)
}

// Ceiling returns the delay before retry number attempt without jitter.
func (p Policy) Ceiling(attempt int) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	d := p.Base
	for i := 1; i < attempt; i++ {
		if d >= p.Max/2 {
			return p.Max
		}
		d *= 2
	}
	if d > p.Max {
		return p.Max
	}
	return d
}

// Sleep waits for Delay(attempt) or until ctx is done; it reports whether the full delay passed.
func (p Policy) Sleep(ctx context.Context, attempt int) bool {
	t := time.NewTimer(p.Delay(attempt))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
