// Package health serves the process's HTTP endpoints: /healthz (alive), /readyz (every
// registered check passes) and /metrics (Prometheus).
package health

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/redact"
)

// Check reports whether one dependency or component is ready; nil means ready. It must
// return promptly: /readyz gives every check CheckTimeout.
type Check func(ctx context.Context) error

// CheckTimeout bounds each check of one /readyz request.
const CheckTimeout = 2 * time.Second

// ErrShuttingDown fails readiness once the process has started to drain.
var ErrShuttingDown = errors.New("shutting down")

// Server holds the readiness checks and serves the endpoints.
type Server struct {
	gatherer prometheus.Gatherer
	log      *zap.Logger

	mu       sync.Mutex
	names    []string
	checks   map[string]Check
	draining atomic.Bool
}

// New returns a Server exporting the metrics of g.
func New(g prometheus.Gatherer, log *zap.Logger) *Server {
	return &Server{gatherer: g, log: log, checks: map[string]Check{}}
}

// Add registers a readiness check under name, replacing one of the same name.
func (s *Server) Add(name string, c Check) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.checks[name]; !ok {
		s.names = append(s.names, name)
	}
	s.checks[name] = c
}

// Drain makes /readyz fail from now on; /healthz and /metrics keep answering.
func (s *Server) Drain() { s.draining.Store(true) }

// Result is the outcome of the readiness checks: Ready, and per check "ok" or the
// reason it fails.
type Result struct {
	Ready  bool              `json:"ready"`
	Checks map[string]string `json:"checks"`
}

// Ready runs every check concurrently, each bounded by CheckTimeout.
func (s *Server) Ready(ctx context.Context) Result {
	s.mu.Lock()
	names := append([]string(nil), s.names...)
	checks := make([]Check, len(names))
	for i, n := range names {
		checks[i] = s.checks[n]
	}
	s.mu.Unlock()

	// A check that overruns its timeout is reported as failed without waiting for it:
	// some drivers do not honour the context in every step.
	results := make([]chan error, len(names))
	for i, c := range checks {
		results[i] = make(chan error, 1)
		go func() {
			cctx, cancel := context.WithTimeout(ctx, CheckTimeout)
			defer cancel()
			results[i] <- c(cctx)
		}()
	}
	timeout := time.NewTimer(CheckTimeout + 100*time.Millisecond)
	defer timeout.Stop()
	errs := make([]error, len(names))
	expired := false
	for i := range results {
		if !expired {
			select {
			case errs[i] = <-results[i]:
				continue
			case <-timeout.C:
				expired = true
			}
		}
		select {
		case errs[i] = <-results[i]:
		default:
			errs[i] = fmt.Errorf("no answer within %s", CheckTimeout)
		}
	}

	r := Result{Ready: true, Checks: map[string]string{}}
	if s.draining.Load() {
		r.Ready = false
		r.Checks["process"] = ErrShuttingDown.Error()
	}
	for i, n := range names {
		if errs[i] != nil {
			r.Ready = false
			r.Checks[n] = redact.Text(errs[i].Error())
		} else {
			r.Checks[n] = "ok"
		}
	}
	return r
}

// Handler returns the mux of /healthz, /readyz and /metrics.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		res := s.Ready(r.Context())
		w.Header().Set("Content-Type", "application/json")
		if !res.Ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(res)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{}))
	return mux
}

// Serve serves the endpoints on ln until ctx is done, then shuts the server down,
// giving requests in flight a few seconds.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          zap.NewStdLog(s.log),
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("serve HTTP on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shut down HTTP server: %w", err)
	}
	<-done
	return nil
}

// Func turns a readiness flag into a Check that fails with problem while the flag is false.
func Func(ready func() bool, problem string) Check {
	return func(context.Context) error {
		if ready() {
			return nil
		}
		return errors.New(problem)
	}
}

// Cached runs c at most once per ttl and answers with the last result in between, so
// that frequent probes do not load the dependency. Concurrent callers share one run.
func Cached(c Check, ttl time.Duration) Check {
	var (
		mu   sync.Mutex
		at   time.Time
		last error
	)
	return func(ctx context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		if !at.IsZero() && time.Since(at) < ttl {
			return last
		}
		last = c(ctx)
		at = time.Now()
		return last
	}
}

// Ping checks the database with a round trip bounded by timeout; errors are redacted.
func Ping(db *sql.DB, timeout time.Duration) Check {
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		if err := db.PingContext(ctx); err != nil {
			return errors.New("database unreachable: " + redact.Text(err.Error()))
		}
		return nil
	}
}
