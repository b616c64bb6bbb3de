package inject

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// writeSelfSigned writes a self-signed certificate for 127.0.0.1 with the
// given serial number and its key, and returns the certificate.
func writeSelfSigned(t *testing.T, certFile, keyFile string, serial int64) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: "sidebox-injector test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// servedSerial connects to addr and returns the serial number of the
// certificate the server presents, verified against roots.
func servedSerial(t *testing.T, addr string, roots *x509.CertPool) int64 {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

func TestServeReloadsCertificateAndShutsDown(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	first := writeSelfSigned(t, certFile, keyFile, 1)
	log := zaptest.NewLogger(t)

	certs, err := newCertReloader(certFile, keyFile, log)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := Config{Addr: ln.Addr().String(), TLSCert: certFile, TLSKey: keyFile, Image: "ghcr.io/sidebox/sidebox:0.1.0", Mode: ModeNative}
	done := make(chan error, 1)
	go func() { done <- serve(ctx, ln, NewHandler(cfg, log), certs, log) }()

	roots := x509.NewCertPool()
	roots.AddCert(first)
	if got := servedSerial(t, ln.Addr().String(), roots); got != 1 {
		t.Fatalf("serial %d, want 1", got)
	}

	// Renew: a new pair with a later modification time, as a Secret volume
	// update leaves it.
	second := writeSelfSigned(t, certFile, keyFile, 2)
	later := time.Now().Add(time.Minute)
	for _, f := range []string{certFile, keyFile} {
		if err := os.Chtimes(f, later, later); err != nil {
			t.Fatal(err)
		}
	}
	roots.AddCert(second)
	if got := servedSerial(t, ln.Addr().String(), roots); got != 2 {
		t.Fatalf("serial %d after renewal, want 2", got)
	}

	// A broken pair is not taken: the previous one is still served.
	if err := os.WriteFile(keyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	evenLater := later.Add(time.Minute)
	if err := os.Chtimes(keyFile, evenLater, evenLater); err != nil {
		t.Fatal(err)
	}
	if got := servedSerial(t, ln.Addr().String(), roots); got != 2 {
		t.Fatalf("serial %d after a broken renewal, want 2", got)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve returned %v after cancel, want nil", err)
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Error("still accepting connections after shutdown")
	}
}

func TestServeConfigErrors(t *testing.T) {
	dir := t.TempDir()
	log := zaptest.NewLogger(t)
	base := Config{Addr: "127.0.0.1:0", TLSCert: filepath.Join(dir, "missing.crt"), TLSKey: filepath.Join(dir, "missing.key"), Image: "ghcr.io/sidebox/sidebox:0.1.0", Mode: ModeNative}

	err := Serve(context.Background(), base, log)
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Var != "SIDEBOX_INJECT_TLS_CERT" {
		t.Errorf("missing key pair: got %v, want a *ConfigError for SIDEBOX_INJECT_TLS_CERT", err)
	}

	bad := base
	bad.Image = ""
	if err := Serve(context.Background(), bad, log); !errors.As(err, &ce) || ce.Var != "SIDEBOX_INJECT_IMAGE" {
		t.Errorf("no image: got %v", err)
	}
}

func TestServeReturnsNilOnCancel(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Addr: "127.0.0.1:0", TLSCert: filepath.Join(dir, "tls.crt"), TLSKey: filepath.Join(dir, "tls.key"), Image: "ghcr.io/sidebox/sidebox:0.1.0", Mode: ModeNative}
	writeSelfSigned(t, cfg.TLSCert, cfg.TLSKey, 7)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Serve(ctx, cfg, zaptest.NewLogger(t)); err != nil {
		t.Fatalf("Serve with a cancelled context: %v", err)
	}
}

func TestServeListenError(t *testing.T) {
	dir := t.TempDir()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cfg := Config{Addr: busy.Addr().String(), TLSCert: filepath.Join(dir, "tls.crt"), TLSKey: filepath.Join(dir, "tls.key"), Image: "ghcr.io/sidebox/sidebox:0.1.0", Mode: ModeNative}
	writeSelfSigned(t, cfg.TLSCert, cfg.TLSKey, 8)
	err = Serve(context.Background(), cfg, zaptest.NewLogger(t))
	var ce *ConfigError
	if err == nil || errors.As(err, &ce) {
		t.Fatalf("port in use: got %v, want a plain error (exit code 1)", err)
	}
}
