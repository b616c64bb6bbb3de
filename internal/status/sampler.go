package status

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/inboxdb"
	"github.com/sidebox/sidebox/internal/metrics"
	"github.com/sidebox/sidebox/internal/outboxdb"
	"github.com/sidebox/sidebox/internal/pg"
	"github.com/sidebox/sidebox/internal/redact"
)

// SamplerConfig says what a Sampler measures; a zero table is skipped.
type SamplerConfig struct {
	Interval time.Duration
	Outbox   pg.Table
	Inbox    pg.Table
	Outboxes []pg.Table // more outbox tables, measured after Outbox
}

// Sampler refreshes the backlog gauges every interval while it runs. Its counts are
// exact up to SampleLimit and estimates above, so a refresh costs the same with any
// backlog; `sidebox status` counts exactly.
type Sampler struct {
	db  *sql.DB
	cfg SamplerConfig
	log *zap.Logger
	m   *metrics.Metrics
}

// NewSampler returns a Sampler; call Run.
func NewSampler(db *sql.DB, cfg SamplerConfig, log *zap.Logger, m *metrics.Metrics) *Sampler {
	return &Sampler{db: db, cfg: cfg, log: log, m: m}
}

// Run samples at once and then every interval until ctx is done. Failures (database
// down, table missing) are logged and retried at the next tick, never returned.
func (s *Sampler) Run(ctx context.Context) {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	failing := false
	for {
		err := s.Sample(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil && !failing:
			s.log.Warn("cannot refresh backlog gauges; retrying every status interval", zap.String("error", redact.Text(err.Error())))
		case err != nil:
			s.log.Debug("cannot refresh backlog gauges", zap.String("error", redact.Text(err.Error())))
		case failing:
			s.log.Info("backlog gauges refreshed again")
		}
		failing = err != nil
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sample measures the configured tables once and sets the gauges. A table that does not
// exist has its series removed. The query is bounded by the interval (1s to 30s), so a
// slow scan never piles up behind the next one.
func (s *Sampler) Sample(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, min(max(s.cfg.Interval, time.Second), 30*time.Second))
	defer cancel()
	var errs []error
	for _, t := range append([]pg.Table{s.cfg.Outbox}, s.cfg.Outboxes...) {
		if t.Name != "" {
			// One table's failure does not keep the others' gauges from refreshing.
			errs = append(errs, s.sampleOutbox(ctx, t), s.sampleOldestRetrying(ctx, t))
		}
	}
	if t := s.cfg.Inbox; t.Name != "" {
		in, err := inboxdb.Count(ctx, s.db, t, SampleLimit)
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		label := t.String()
		if in == nil {
			s.m.InboxUnprocessed.DeleteLabelValues(label)
			s.m.InboxDead.DeleteLabelValues(label)
		} else {
			s.m.InboxUnprocessed.WithLabelValues(label).Set(float64(in.Unprocessed))
			s.m.InboxDead.WithLabelValues(label).Set(float64(in.Dead))
		}
	}
	return errors.Join(errs...)
}

// sampleOutbox measures the outbox table t and sets its gauges.
func (s *Sampler) sampleOutbox(ctx context.Context, t pg.Table) error {
	o, err := outboxdb.Count(ctx, s.db, t, SampleLimit)
	if err != nil {
		return err
	}
	label := t.String()
	if o == nil {
		s.m.Pending.DeleteLabelValues(label)
		s.m.Retrying.DeleteLabelValues(label)
		s.m.Dead.DeleteLabelValues(label)
		s.m.BlockedKeys.DeleteLabelValues(label)
		s.m.OldestPending.DeleteLabelValues(label)
	} else {
		s.m.Pending.WithLabelValues(label).Set(float64(o.Pending))
		s.m.Retrying.WithLabelValues(label).Set(float64(o.Retrying))
		s.m.Dead.WithLabelValues(label).Set(float64(o.Dead))
		s.m.BlockedKeys.WithLabelValues(label).Set(float64(o.BlockedKeys))
		s.m.OldestPending.WithLabelValues(label).Set(o.OldestPendingAgeSeconds)
	}
	return nil
}
