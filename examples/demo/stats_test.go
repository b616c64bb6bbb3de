package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestScrapeSumsOverLabels(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`# HELP sidebox_inbox_duplicates_total Duplicates.
# TYPE sidebox_inbox_duplicates_total counter
sidebox_inbox_duplicates_total{queue="shipping.orders"} 7
sidebox_inbox_rejected_total{queue="shipping.orders",reason="no_message_id"} 2
sidebox_inbox_rejected_total{queue="shipping.orders",reason="unstorable"} 1
sidebox_up 1
`))
	}))
	defer srv.Close()
	m, err := scrape(t.Context(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if m["sidebox_inbox_duplicates_total"] != 7 || m["sidebox_inbox_rejected_total"] != 3 || m["sidebox_up"] != 1 {
		t.Errorf("scrape = %v", m)
	}
}

func TestDrained(t *testing.T) {
	done := snapshot{attempted: 110, orders: 100, inbox: 100, shipped: 100, metricsOK: true,
		received: 105, stored: 100, duplicates: 5, queueOK: true}
	if !done.drained(5) {
		t.Errorf("%+v not drained", done)
	}
	for name, change := range map[string]func(*snapshot){
		"outbox not empty":          func(s *snapshot) { s.outbox = 1 },
		"unprocessed inbox row":     func(s *snapshot) { s.unprocessed = 1 },
		"shipment missing":          func(s *snapshot) { s.shipped = 99 },
		"message in the queue":      func(s *snapshot) { s.ready = 1 },
		"delivery being stored":     func(s *snapshot) { s.received = 106 },
		"injected copy not arrived": func(s *snapshot) { s.duplicates, s.received = 4, 104 },
	} {
		s := done
		change(&s)
		if s.drained(5) {
			t.Errorf("%s: drained", name)
		}
	}
	if got := done.rolledBack(); got != 10 {
		t.Errorf("rolledBack = %d, want 10", got)
	}
}
