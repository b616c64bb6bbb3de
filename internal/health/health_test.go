package health

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

func TestEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "sidebox_test_gauge", Help: "test"})
	reg.MustRegister(g)
	s := New(reg, zap.NewNop())
	var brokerUp atomic.Bool
	s.Add("rabbitmq", Func(brokerUp.Load, "not connected to RabbitMQ"))
	s.Add("postgres", func(context.Context) error {
		return errors.New("dial postgres://app:hunter2@db/app: refused")
	})
	h := s.Handler()

	if code, body := get(t, h, "/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	code, body := get(t, h, "/readyz")
	if code != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d, want 503", code)
	}
	var res Result
	if err := json.Unmarshal([]byte(body), &res); err != nil {
		t.Fatalf("/readyz body %q: %v", body, err)
	}
	if res.Ready || res.Checks["rabbitmq"] != "not connected to RabbitMQ" || !strings.Contains(res.Checks["postgres"], "refused") {
		t.Errorf("/readyz = %+v", res)
	}
	if strings.Contains(body, "hunter2") {
		t.Errorf("/readyz shows a password: %s", body)
	}

	brokerUp.Store(true)
	s.Add("postgres", func(context.Context) error { return nil })
	if code, body := get(t, h, "/readyz"); code != 200 || !strings.Contains(body, `"ready":true`) {
		t.Errorf("/readyz = %d %s", code, body)
	}
	s.Drain()
	if code, body := get(t, h, "/readyz"); code != 503 || !strings.Contains(body, "shutting down") {
		t.Errorf("/readyz while draining = %d %s", code, body)
	}

	g.Set(42)
	if code, body := get(t, h, "/metrics"); code != 200 || !strings.Contains(body, "sidebox_test_gauge 42") {
		t.Errorf("/metrics = %d %s", code, body)
	}
}

func TestCheckTimeout(t *testing.T) {
	s := New(prometheus.NewRegistry(), zap.NewNop())
	s.Add("slow", func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	})
	release := make(chan struct{})
	defer close(release)
	s.Add("stuck", func(context.Context) error {
		<-release // ignores its context
		return nil
	})
	s.Add("fine", func(context.Context) error { return nil })
	start := time.Now()
	res := s.Ready(context.Background())
	if took := time.Since(start); took > CheckTimeout+time.Second {
		t.Errorf("Ready took %s", took)
	}
	if res.Ready || res.Checks["fine"] != "ok" || res.Checks["stuck"] != "no answer within 2s" || !strings.Contains(res.Checks["slow"], "deadline") {
		t.Errorf("Ready = %+v", res)
	}
}

func TestCached(t *testing.T) {
	var calls atomic.Int32
	c := Cached(func(context.Context) error { calls.Add(1); return nil }, time.Hour)
	for range 5 {
		if err := c(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if calls.Load() != 1 {
		t.Errorf("check ran %d times, want 1", calls.Load())
	}
}

func TestServeShutsDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(prometheus.NewRegistry(), zap.NewNop())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	resp, err := http.Get("http://" + ln.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve = %v", err)
	}
}
