package inbox

import (
	"errors"
	"slices"
	"testing"
	"time"
)

// Validate reports every invalid field at once, each a *ConfigError, so that a caller
// (the CLI) can name every bad setting in one go.
func TestConfigValidateReportsEveryField(t *testing.T) {
	c := ConsumerConfig{Queue: "q", Prefetch: MaxPrefetch + 1, Workers: MaxWorkers + 1, BatchWait: -time.Second}
	c.SetDefaults()
	p := PurgerConfig{Retention: time.Second, Interval: -time.Second}
	p.SetDefaults()
	for _, tc := range []struct {
		err  error
		want []string
	}{
		// BatchSize (128) is not reported against a Prefetch that is itself out of bounds.
		{c.Validate(), []string{"Prefetch", "BatchWait", "Workers"}},
		{p.Validate(), []string{"Retention", "Interval"}},
	} {
		joined, ok := tc.err.(interface{ Unwrap() []error })
		if !ok {
			t.Errorf("Validate = %v, want %d errors", tc.err, len(tc.want))
			continue
		}
		var fields []string
		for _, e := range joined.Unwrap() {
			var ce *ConfigError
			if !errors.As(e, &ce) {
				t.Fatalf("%v is not a *ConfigError", e)
			}
			fields = append(fields, ce.Field)
		}
		if !slices.Equal(fields, tc.want) {
			t.Errorf("Validate reports %v, want %v:\n%v", fields, tc.want, tc.err)
		}
	}
}
