package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TLSFiles are a certificate authority of one test and certificates it signed, as PEM
// files in a temporary directory: a server certificate for 127.0.0.1 and localhost,
// and a client certificate. Keys are ECDSA P-256 in SEC 1 form, which Go, OpenSSL
// (PostgreSQL) and Erlang (RabbitMQ) all read.
type TLSFiles struct {
	CA         string // the CA's certificate: what a client or server trusts
	ServerCert string // certificate of 127.0.0.1 and localhost
	ServerKey  string
	ClientCert string // client certificate, common name "sidebox"
	ClientKey  string
}

// NewTLS creates a fresh CA and its server and client certificates in t.TempDir().
// Two calls give two unrelated CAs, so one test's CA can serve as the wrong CA of another.
func NewTLS(t testing.TB) *TLSFiles {
	t.Helper()
	dir := t.TempDir()
	f, err := newTLS(dir)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return f
}

func newTLS(dir string) (*TLSFiles, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "sidebox test CA " + randomHex(4)},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	if ca, err = x509.ParseCertificate(caDER); err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	f := &TLSFiles{
		CA:         filepath.Join(dir, "ca.crt"),
		ServerCert: filepath.Join(dir, "server.crt"),
		ServerKey:  filepath.Join(dir, "server.key"),
		ClientCert: filepath.Join(dir, "client.crt"),
		ClientKey:  filepath.Join(dir, "client.key"),
	}
	if err := writePEM(f.CA, "CERTIFICATE", caDER); err != nil {
		return nil, err
	}
	leaves := []struct {
		cert, key string
		tmpl      x509.Certificate
	}{
		{f.ServerCert, f.ServerKey, x509.Certificate{
			Subject:     pkix.Name{CommonName: "localhost"},
			DNSNames:    []string{"localhost"},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}},
		{f.ClientCert, f.ClientKey, x509.Certificate{
			Subject:     pkix.Name{CommonName: "sidebox"},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}},
	}
	for _, l := range leaves {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("key: %w", err)
		}
		tmpl := l.tmpl
		tmpl.SerialNumber = serial()
		tmpl.NotBefore, tmpl.NotAfter = ca.NotBefore, ca.NotAfter
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, &tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return nil, fmt.Errorf("certificate %s: %w", tmpl.Subject.CommonName, err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("key: %w", err)
		}
		if err := writePEM(l.cert, "CERTIFICATE", der); err != nil {
			return nil, err
		}
		if err := writePEM(l.key, "EC PRIVATE KEY", keyDER); err != nil {
			return nil, err
		}
	}
	return f, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62)) // never fails on Linux
	return n.Add(n, big.NewInt(1))
}

func writePEM(path, typ string, der []byte) error {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// copyFile copies src to dst with mode perm, owned by uid and gid unless uid is -1.
func copyFile(src, dst string, perm os.FileMode, uid, gid int) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := os.WriteFile(dst, b, perm); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if uid >= 0 {
		if err := os.Chown(dst, uid, gid); err != nil {
			return fmt.Errorf("chown %s: %w", dst, err)
		}
	}
	return nil
}
