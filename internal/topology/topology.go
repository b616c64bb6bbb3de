// Package topology parses and declares the RabbitMQ objects sidebox declares on a
// service's behalf: the inbox's bindings (SIDEBOX_INBOX_BINDINGS, parsed here, declared
// by the inbox consumer) and the outbox's exchanges, queues and bindings
// (SIDEBOX_OUTBOX_DECLARE, SIDEBOX_OUTBOX_BINDINGS), declared before the relay starts.
package topology

import (
	"fmt"
	"slices"
	"strings"
)

// maxName is AMQP's limit on exchange and queue names and routing keys (a shortstr).
const maxName = 255

// Kinds are the exchange types an outbox exchange may be declared with.
var Kinds = []string{"direct", "fanout", "topic", "headers"}

// DefaultKind is the type of an exchange declared without one.
const DefaultKind = "topic"

// Exchange is an exchange sidebox declares: durable, not auto-deleted, not internal.
type Exchange struct {
	Name string
	Kind string
}

func (e Exchange) String() string { return e.Name + ":" + e.Kind }

// Binding binds Queue to Exchange with RoutingKey; Queue is empty for the inbox's
// bindings, whose queue is the inbox queue.
type Binding struct {
	Queue      string
	Exchange   string
	RoutingKey string
}

func (b Binding) String() string {
	s := b.Exchange + ":" + b.RoutingKey
	if b.Queue != "" {
		s = b.Queue + ":" + s
	}
	return s
}

// Topology is what the outbox side declares: exchanges first, then each binding's
// queue (durable, when missing) and the binding.
type Topology struct {
	Exchanges []Exchange
	Bindings  []Binding
}

// Empty reports whether there is nothing to declare.
func (t Topology) Empty() bool { return len(t.Exchanges) == 0 && len(t.Bindings) == 0 }

// items splits a comma-separated list, trimming blanks; what names an item in errors.
func items(s, what, want string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []string
	for i, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			return nil, fmt.Errorf("%s %d is empty; want %s separated by commas", what, i+1, want)
		}
		out = append(out, part)
	}
	return out, nil
}

// ParseBinding parses one "exchange:routing.key". The exchange ends at the first
// colon; the routing key may be empty (fanout and headers exchanges).
func ParseBinding(part string) (exchange, key string, err error) {
	exchange, key, ok := strings.Cut(part, ":")
	if !ok {
		return "", "", fmt.Errorf("binding %q has no colon; want exchange:routing.key", part)
	}
	if exchange == "" {
		return "", "", fmt.Errorf("binding %q names no exchange (the default exchange cannot be bound); want exchange:routing.key", part)
	}
	if len(exchange) > maxName || len(key) > maxName {
		return "", "", fmt.Errorf("binding %q: exchange and routing key are at most %d bytes each", part, maxName)
	}
	return exchange, key, nil
}

// ParseBindings parses "exchange:routing.key,exchange2:key2" (the inbox's form). The
// routing key cannot contain a comma. An empty string yields no bindings.
func ParseBindings(s string) ([]Binding, error) {
	parts, err := items(s, "binding", "exchange:routing.key")
	if err != nil {
		return nil, err
	}
	var out []Binding
	for _, part := range parts {
		ex, key, err := ParseBinding(part)
		if err != nil {
			return nil, err
		}
		out = append(out, Binding{Exchange: ex, RoutingKey: key})
	}
	return out, nil
}

// ParseQueueBindings parses "queue:exchange:routing.key,..." (the outbox's form): the
// queue ends at the first colon, the rest is an inbox-style binding.
func ParseQueueBindings(s string) ([]Binding, error) {
	parts, err := items(s, "binding", "queue:exchange:routing.key")
	if err != nil {
		return nil, err
	}
	var out []Binding
	for _, part := range parts {
		queue, rest, _ := strings.Cut(part, ":")
		if queue == "" || rest == "" {
			return nil, fmt.Errorf("binding %q names no queue; want queue:exchange:routing.key", part)
		}
		if len(queue) > maxName {
			return nil, fmt.Errorf("binding %q: the queue name is at most %d bytes", part, maxName)
		}
		ex, key, err := ParseBinding(rest)
		if err != nil {
			return nil, fmt.Errorf("%w (in %q; want queue:exchange:routing.key)", err, part)
		}
		out = append(out, Binding{Queue: queue, Exchange: ex, RoutingKey: key})
	}
	return out, nil
}

// ParseExchanges parses "name[:type],..." with the same syntax as a binding: the name
// ends at the first colon; the type is one of Kinds, DefaultKind when left out.
func ParseExchanges(s string) ([]Exchange, error) {
	parts, err := items(s, "exchange", "name or name:type")
	if err != nil {
		return nil, err
	}
	var out []Exchange
	seen := map[string]string{}
	for _, part := range parts {
		name, kind, ok := strings.Cut(part, ":")
		if !ok {
			kind = DefaultKind
		}
		switch {
		case name == "":
			return nil, fmt.Errorf("exchange %q has no name (the default exchange exists already); want name or name:type", part)
		case strings.HasPrefix(name, "amq."):
			return nil, fmt.Errorf("exchange %q: names starting with amq. are reserved by RabbitMQ", part)
		case len(name) > maxName:
			return nil, fmt.Errorf("exchange %q: the name is at most %d bytes", part, maxName)
		case !slices.Contains(Kinds, kind):
			return nil, fmt.Errorf("exchange %q has type %q; want one of %s", part, kind, strings.Join(Kinds, ", "))
		case seen[name] != "" && seen[name] != kind:
			return nil, fmt.Errorf("exchange %q is listed twice, as %s and as %s", name, seen[name], kind)
		case seen[name] != "":
			continue
		}
		seen[name] = kind
		out = append(out, Exchange{Name: name, Kind: kind})
	}
	return out, nil
}
