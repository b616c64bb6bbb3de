package inject

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
)

// shutdownTimeout bounds the wait for requests in flight at shutdown; the API
// server gives a webhook call at most 30 s.
const shutdownTimeout = 10 * time.Second

// Serve validates cfg, then serves NewHandler over HTTPS on cfg.Addr until ctx
// is cancelled; it then stops accepting connections, waits for the requests
// in flight (at most 10 s) and returns nil.
//
// The certificate and key are read at start (a file that cannot be loaded is
// a *ConfigError) and again on the first TLS handshake after either file
// changed, so a certificate renewed by cert-manager (or any rewrite of the
// Secret volume) is served without a restart; a pair that fails to load is
// logged and the previous one kept. Any other failure to serve is returned.
func Serve(ctx context.Context, cfg Config, log *zap.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	certs, err := newCertReloader(cfg.TLSCert, cfg.TLSKey, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("inject: listen on %s: %w", cfg.Addr, err)
	}
	return serve(ctx, ln, NewHandler(cfg, log), certs, log)
}

// serve runs the HTTPS server on ln until ctx is cancelled.
func serve(ctx context.Context, ln net.Listener, h http.Handler, certs *certReloader, log *zap.Logger) error {
	srv := &http.Server{
		Handler: h,
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: certs.getCertificate,
		},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          zap.NewStdLog(log.Named("http")),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	log.Info("admission webhook listening", zap.String("addr", ln.Addr().String()))

	select {
	case err := <-errc:
		return fmt.Errorf("inject: serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("inject: shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("inject: serve: %w", err)
	}
	log.Info("admission webhook stopped")
	return nil
}

// certReloader serves a key pair from files and reloads it when either file's
// modification time or size changes.
type certReloader struct {
	certFile, keyFile string
	log               *zap.Logger

	mu       sync.Mutex
	cert     *tls.Certificate
	certStat fileStamp
	keyStat  fileStamp
}

type fileStamp struct {
	mod  time.Time
	size int64
}

func (a fileStamp) same(b fileStamp) bool { return a.size == b.size && a.mod.Equal(b.mod) }

func stamp(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{mod: fi.ModTime(), size: fi.Size()}, nil
}

func newCertReloader(certFile, keyFile string, log *zap.Logger) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, log: log}
	if err := r.load(); err != nil {
		return nil, &ConfigError{Var: "SIDEBOX_INJECT_TLS_CERT", Problem: fmt.Sprintf("cannot load the key pair %s, %s: %v", certFile, keyFile, err)}
	}
	return r, nil
}

// load reads both files; the caller holds mu or has not shared r yet.
func (r *certReloader) load() error {
	cs, err := stamp(r.certFile)
	if err != nil {
		return err
	}
	ks, err := stamp(r.keyFile)
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return err
	}
	r.cert, r.certStat, r.keyStat = &cert, cs, ks
	return nil
}

func (r *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cs, cerr := stamp(r.certFile)
	ks, kerr := stamp(r.keyFile)
	if cerr == nil && kerr == nil && (!cs.same(r.certStat) || !ks.same(r.keyStat)) {
		if err := r.load(); err != nil {
			r.log.Warn("reload TLS key pair; serving the previous one", zap.Error(err))
			// Do not retry on every handshake until a file changes again.
			r.certStat, r.keyStat = cs, ks
		} else {
			r.log.Info("TLS key pair reloaded", zap.String("cert", r.certFile))
		}
	}
	return r.cert, nil
}
