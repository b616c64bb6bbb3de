package inbox

import (
	"strings"
	"sync"

	"github.com/sidebox/sidebox/internal/redact"
)

// notReady keeps why the consumer's last session ended, so that readiness can say it.
type notReady struct {
	mu  sync.Mutex
	err string
}

func (n *notReady) set(err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.err = redact.Text(err.Error())
}

func (n *notReady) get() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.err
}

// NotReadyReason says why the consumer is not ready, in words for /readyz ("queue
// "shipping" does not exist: declare it, or set SIDEBOX_INBOX_DECLARE"); "" when it
// is ready.
func (c *Consumer) NotReadyReason() string {
	switch {
	case c.Ready():
		return ""
	case !c.broker.Ready():
		return "inbox consumer not consuming: not connected to RabbitMQ"
	case !c.dbOK.Load() && c.consuming.Load():
		return "inbox consumer not consuming: the database does not answer"
	}
	last := c.interrupt.get()
	switch {
	case last == "":
		return "inbox consumer not consuming (starting)"
	case strings.Contains(last, "NOT_FOUND") && strings.Contains(last, "no queue"):
		return "inbox consumer not consuming: queue \"" + c.cfg.Queue + "\" does not exist; declare it, or set SIDEBOX_INBOX_DECLARE=true (or SIDEBOX_INBOX_BINDINGS) to have sidebox declare it (" + last + ")"
	}
	return "inbox consumer not consuming: " + last
}
