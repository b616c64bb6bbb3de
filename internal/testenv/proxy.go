package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// TCPProxy is an in-process toxiproxy between a client and a server, to break their
// connections on purpose. Create it with [Proxy].
type TCPProxy struct {
	proxy *toxiproxy.Proxy
}

// Proxy starts a TCP proxy on a free port of 127.0.0.1 in front of upstream, a
// host:port or a URL (amqp://, amqps://, postgres:// ...; the scheme's default port
// when it has none). It is closed in t.Cleanup. Point the client at [TCPProxy.Addr]
// or [TCPProxy.URL].
func Proxy(t testing.TB, upstream string) *TCPProxy {
	t.Helper()
	addr, err := upstreamAddr(upstream)
	if err != nil {
		t.Fatalf("testenv: Proxy: %v", err)
	}
	server := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := toxiproxy.NewProxy(server, "sidebox", "127.0.0.1:0", addr)
	if err := p.Start(); err != nil {
		t.Fatalf("testenv: Proxy: start: %v", err)
	}
	t.Cleanup(p.Stop)
	return &TCPProxy{proxy: p}
}

// Addr returns the host:port the proxy listens on; it stays the same across Cut and
// Restore.
func (p *TCPProxy) Addr() string {
	p.proxy.Lock()
	defer p.proxy.Unlock()
	return p.proxy.Listen
}

// URL returns rawURL (the upstream's URL) with its host and port replaced by the
// proxy's, user-info, path and query kept.
func (p *TCPProxy) URL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		return rawURL
	}
	u.Host = p.Addr()
	return u.String()
}

// Cut closes every proxied connection and stops listening: new connections are
// refused until [TCPProxy.Restore].
func (p *TCPProxy) Cut(t testing.TB) {
	t.Helper()
	p.proxy.Stop()
}

// Stall keeps every connection, current and new, open but lets no byte through in
// either direction, as a network partition does: only timeouts and heartbeats notice.
// [TCPProxy.Restore] ends it by closing the stalled connections.
func (p *TCPProxy) Stall(t testing.TB) {
	t.Helper()
	p.proxy.Toxics.ResetToxics(context.Background())
	for _, stream := range []string{"upstream", "downstream"} {
		spec := fmt.Sprintf(`{"name":"stall_%s","type":"timeout","stream":%q,"toxicity":1,"attributes":{"timeout":0}}`, stream, stream)
		if _, err := p.proxy.Toxics.AddToxicJson(strings.NewReader(spec)); err != nil {
			t.Fatalf("testenv: Proxy: stall: %v", err)
		}
	}
}

// Latency delays every chunk of data in both directions by latency, plus or minus
// jitter, until [TCPProxy.Restore].
func (p *TCPProxy) Latency(t testing.TB, latency, jitter time.Duration) {
	t.Helper()
	p.addToxics(t, "latency", fmt.Sprintf(`{"latency":%d,"jitter":%d}`, latency.Milliseconds(), jitter.Milliseconds()))
}

// Bandwidth limits each direction of every connection to kbps kilobytes per second,
// until [TCPProxy.Restore].
func (p *TCPProxy) Bandwidth(t testing.TB, kbps int) {
	t.Helper()
	p.addToxics(t, "bandwidth", fmt.Sprintf(`{"rate":%d}`, kbps))
}

// addToxics adds a toxic of a type with its attributes (a JSON object) to both streams.
func (p *TCPProxy) addToxics(t testing.TB, kind, attributes string) {
	t.Helper()
	for _, stream := range []string{"upstream", "downstream"} {
		spec := fmt.Sprintf(`{"name":"%s_%s","type":%q,"stream":%q,"toxicity":1,"attributes":%s}`, kind, stream, kind, stream, attributes)
		if _, err := p.proxy.Toxics.AddToxicJson(strings.NewReader(spec)); err != nil {
			t.Fatalf("testenv: Proxy: %s: %v", kind, err)
		}
	}
}

// Restore undoes Cut, Stall, Latency and Bandwidth: the proxy listens on the same
// address again and passes data through.
func (p *TCPProxy) Restore(t testing.TB) {
	t.Helper()
	p.proxy.Toxics.ResetToxics(context.Background())
	if err := p.proxy.Start(); err != nil && !errors.Is(err, toxiproxy.ErrProxyAlreadyStarted) {
		t.Fatalf("testenv: Proxy: listen again on %s: %v", p.Addr(), err)
	}
}

// upstreamAddr returns the host:port of a host:port or a URL.
func upstreamAddr(s string) (string, error) {
	if !strings.Contains(s, "://") {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return "", fmt.Errorf("upstream %q: %w", s, err)
		}
		return s, nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("upstream %s: %w", Redacted(s), err)
	}
	if u.Port() != "" {
		return u.Host, nil
	}
	ports := map[string]string{"amqp": "5672", "amqps": "5671", "postgres": "5432", "postgresql": "5432"}
	port, ok := ports[u.Scheme]
	if !ok || u.Hostname() == "" {
		return "", fmt.Errorf("upstream %s: no host and port", Redacted(s))
	}
	return net.JoinHostPort(u.Hostname(), port), nil
}
