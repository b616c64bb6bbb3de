package metrics

import (
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestNewRegistersEveryNamedFamily(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	names := m.Names()
	// One name per collector field of Metrics: a field left out of New is missed.
	if want := reflect.TypeFor[Metrics]().NumField() - unexportedFields; len(names) != want {
		t.Fatalf("got %d metric names, want %d (one per collector): %v", len(names), want, names)
	}
	for _, n := range names {
		if !strings.HasPrefix(n, "sidebox_") {
			t.Errorf("metric %q lacks the sidebox_ prefix", n)
		}
	}
	// A second Register on the same registry reuses every collector: proves that each
	// one was registered (an unregistered one would be registered anew, not reused).
	again, err := Register(reg)
	if err != nil {
		t.Fatalf("second Register on the same registry: %v", err)
	}
	v, w := reflect.ValueOf(m).Elem(), reflect.ValueOf(again).Elem()
	for i := range v.NumField() {
		if f := v.Type().Field(i); f.IsExported() && v.Field(i).Interface() != w.Field(i).Interface() {
			t.Errorf("second Register made a new %s instead of reusing the registered one", f.Name)
		}
	}
}

func TestRegisterRefusesAForeignMetricOfTheSameName(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "sidebox_up", Help: "not ours"}))
	if _, err := Register(reg); err == nil || !strings.Contains(err.Error(), "sidebox_up") {
		t.Fatalf("Register over a foreign sidebox_up: err = %v, want one naming sidebox_up", err)
	}
}

// unexportedFields are the fields of Metrics that are not collectors (names).
const unexportedFields = 1

// Every outbox and inbox-table family is labelled by table, so that one sidecar
// serving several tables (SIDEBOX_OUTBOX_TABLE=a.outbox,b.outbox) exports a series each.
func TestTableFamiliesCarryTheTableLabel(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	for _, tb := range []string{"a.outbox", "b.outbox"} {
		m.Published.WithLabelValues(tb).Add(1)
		m.PublishLatency.WithLabelValues(tb).Observe(0.1)
		m.BatchSize.WithLabelValues(tb).Observe(1)
		m.Returned.WithLabelValues(tb)
		m.Nacked.WithLabelValues(tb)
		m.DeadTotal.WithLabelValues(tb)
		m.Pending.WithLabelValues(tb)
		m.Retrying.WithLabelValues(tb)
		m.Dead.WithLabelValues(tb)
		m.BlockedKeys.WithLabelValues(tb)
		m.OldestPending.WithLabelValues(tb)
		m.WakeupsPolled.WithLabelValues(tb)
		m.InboxUnprocessed.WithLabelValues(tb)
		m.InboxDead.WithLabelValues(tb)
		m.InboxPurged.WithLabelValues(tb)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, f := range families {
		name := f.GetName()
		if !strings.HasPrefix(name, "sidebox_outbox_") && name != "sidebox_inbox_unprocessed" && name != "sidebox_inbox_dead" && name != "sidebox_inbox_purged_total" {
			continue
		}
		seen++
		tables := map[string]bool{}
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "table" {
					tables[l.GetValue()] = true
				}
			}
		}
		if len(f.GetMetric()) != 2 || !tables["a.outbox"] || !tables["b.outbox"] {
			t.Errorf("%s: series %v, want one per table", name, tables)
		}
	}
	if seen != 15 {
		t.Errorf("checked %d families, want 15", seen)
	}
}
