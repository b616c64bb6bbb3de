package testenv

import (
	"strings"
	"testing"
)

// WithRabbitMQConf reaches the node's configuration.
func TestRabbitMQConf(t *testing.T) {
	t.Parallel()
	rmq := StartRabbitMQ(t, WithRabbitMQConf("max_message_size = 1048576"))
	out := rmq.Ctl(t, "eval", "application:get_env(rabbit, max_message_size).")
	if !strings.Contains(out, "1048576") {
		t.Fatalf("max_message_size on %s: %q, want 1048576", rmq.Node(), out)
	}
}
