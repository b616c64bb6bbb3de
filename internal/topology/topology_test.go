package topology

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseExchanges(t *testing.T) {
	got, err := ParseExchanges(" orders , billing:fanout,orders:topic")
	want := []Exchange{{"orders", "topic"}, {"billing", "fanout"}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, %v; want %v", got, err, want)
	}
	if got, err := ParseExchanges(""); err != nil || got != nil {
		t.Errorf("empty: %v, %v", got, err)
	}
	for in, problem := range map[string]string{
		"orders,,x":                  "exchange 2 is empty",
		":topic":                     "has no name",
		"amq.topic":                  "reserved",
		"orders:fan":                 `has type "fan"`,
		"orders:topic,orders:direct": "listed twice, as topic and as direct",
		strings.Repeat("x", 256):     "at most 255 bytes",
	} {
		if _, err := ParseExchanges(in); err == nil || !strings.Contains(err.Error(), problem) {
			t.Errorf("%q: got %v, want %q", in, err, problem)
		}
	}
}

func TestParseQueueBindings(t *testing.T) {
	got, err := ParseQueueBindings("shipping:orders:order.*, audit:events:,q:ex:a:b")
	want := []Binding{{"shipping", "orders", "order.*"}, {"audit", "events", ""}, {"q", "ex", "a:b"}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, %v; want %v", got, err, want)
	}
	for in, problem := range map[string]string{
		"shipping":        "names no queue",
		":orders:key":     "names no queue",
		"shipping:orders": "has no colon",
		"shipping::key":   "names no exchange",
		"a:b:c,":          "binding 2 is empty",
	} {
		if _, err := ParseQueueBindings(in); err == nil || !strings.Contains(err.Error(), problem) {
			t.Errorf("%q: got %v, want %q", in, err, problem)
		}
	}
}

func TestParseBindingsInboxForm(t *testing.T) {
	got, err := ParseBindings("orders:order.*,billing:")
	want := []Binding{{"", "orders", "order.*"}, {"", "billing", ""}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, %v; want %v", got, err, want)
	}
}
