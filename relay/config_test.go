package relay

import (
	"errors"
	"slices"
	"testing"
	"time"
)

// Validate reports every invalid field at once, each a *ConfigError, so that a caller
// (the CLI) can name every bad setting in one go.
func TestConfigValidateReportsEveryField(t *testing.T) {
	c := Config{Table: "Bad.Table.Name", BatchSize: 0, PollInterval: -time.Second, RetryBackoff: time.Minute,
		RetryBackoffMax: time.Second, PublishTimeout: time.Second, MaxAttempts: 1, Workers: MaxWorkers + 1,
		BatchBytes: MinBatchBytes, MaxMessageBytes: MinMaxMessageBytes, Prepare: "sometimes"}
	err := c.Validate()
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("Validate = %v, want one error per bad field", err)
	}
	var fields []string
	for _, e := range joined.Unwrap() {
		var ce *ConfigError
		if !errors.As(e, &ce) {
			t.Fatalf("%v is not a *ConfigError", e)
		}
		fields = append(fields, ce.Field)
	}
	want := []string{"Table", "BatchSize", "PollInterval", "RetryBackoffMax", "Workers", "Prepare"}
	if !slices.Equal(fields, want) {
		t.Errorf("Validate reports %v, want %v:\n%v", fields, want, err)
	}
}
