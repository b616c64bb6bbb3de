package inbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/sidebox/sidebox/internal/inboxdb"
	"github.com/sidebox/sidebox/internal/redact"
)

// Purger deletes processed inbox rows older than the retention window, in small batches
// so that no statement holds many row locks or bloats a transaction. Unprocessed and
// dead rows are never purged.
type Purger struct {
	db     *sql.DB
	cfg    PurgerConfig
	log    *zap.Logger
	purged prometheus.Counter
	sql    string
}

// NewPurger returns a Purger; cfg is completed with defaults and validated. Of the
// options it takes WithLogger and WithRegisterer (sidebox_inbox_purged_total).
func NewPurger(db *sql.DB, cfg PurgerConfig, opts ...Option) (*Purger, error) {
	o := newOptions(opts)
	if o.conn != nil {
		return nil, errors.New("inbox purger: WithConnection applies to a Consumer only")
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("inbox purger: %w", err)
	}
	m, err := o.metrics()
	if err != nil {
		return nil, fmt.Errorf("inbox purger: %w", err)
	}
	return &Purger{
		db:     db,
		cfg:    cfg,
		log:    o.log.With(zap.String("table", cfg.Table)),
		purged: m.InboxPurged.WithLabelValues(cfg.Table),
		sql:    inboxdb.PurgeSQL(cfg.Table, cfg.Retention, cfg.BatchSize),
	}, nil
}

// Run purges every Interval until ctx is cancelled, then returns nil. Errors (a database
// that is down, a table not yet migrated) are logged and retried at the next round.
func (p *Purger) Run(ctx context.Context) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		n, err := p.PurgeOnce(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			p.log.Warn("cannot purge processed inbox rows; retrying later", zap.String("error", redact.Text(err.Error())))
		case n > 0:
			p.log.Info("purged processed inbox rows", zap.Int64("rows", n), zap.Duration("retention", p.cfg.Retention))
		}
		t.Reset(p.cfg.Interval)
	}
}

// PurgeOnce deletes batches of expired rows until a batch comes back short, and returns
// how many rows it deleted.
func (p *Purger) PurgeOnce(ctx context.Context) (int64, error) {
	var total int64
	for {
		res, err := p.db.ExecContext(ctx, p.sql)
		if err != nil {
			return total, fmt.Errorf("purge inbox rows: %w", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, fmt.Errorf("purge inbox rows: %w", err)
		}
		total += n
		p.purged.Add(float64(n))
		if n < int64(p.cfg.BatchSize) || ctx.Err() != nil {
			return total, nil
		}
	}
}
