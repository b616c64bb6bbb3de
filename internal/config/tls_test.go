package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sidebox/sidebox/internal/testenv"
)

func TestAMQPTLS(t *testing.T) {
	files := testenv.NewTLS(t)
	base := map[string]string{"SIDEBOX_AMQP_URL": "amqps://u:" + secret + "@mq:5671/"}
	with := func(kv ...string) map[string]string {
		env := map[string]string{}
		for k, v := range base {
			env[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			env[kv[i]] = kv[i+1]
		}
		return env
	}

	setEnv(t, base)
	c := Load()
	if err := c.Check(Broker); err != nil || c.AMQPTLS != nil {
		t.Fatalf("no TLS files: %v, %v", err, c.AMQPTLS)
	}

	setEnv(t, with("SIDEBOX_AMQP_CA_FILE", files.CA, "SIDEBOX_AMQP_CERT_FILE", files.ClientCert, "SIDEBOX_AMQP_KEY_FILE", files.ClientKey))
	c = Load()
	if err := c.Check(Broker); err != nil {
		t.Fatal(err)
	}
	if c.AMQPTLS == nil || c.AMQPTLS.RootCAs == nil || len(c.AMQPTLS.Certificates) != 1 {
		t.Fatalf("AMQPTLS = %+v", c.AMQPTLS)
	}

	junk := filepath.Join(t.TempDir(), "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		env  map[string]string
		want string
	}{
		{with("SIDEBOX_AMQP_CA_FILE", "/nonexistent/ca.crt"), "SIDEBOX_AMQP_CA_FILE: cannot read it: /nonexistent/ca.crt: no such file or directory"},
		{with("SIDEBOX_AMQP_CA_FILE", junk), "SIDEBOX_AMQP_CA_FILE: " + junk + " holds no PEM certificate"},
		{with("SIDEBOX_AMQP_CERT_FILE", files.ClientCert), "SIDEBOX_AMQP_KEY_FILE: must be set with SIDEBOX_AMQP_CERT_FILE"},
		{with("SIDEBOX_AMQP_KEY_FILE", files.ClientKey), "SIDEBOX_AMQP_CERT_FILE: must be set with SIDEBOX_AMQP_KEY_FILE"},
		{with("SIDEBOX_AMQP_CERT_FILE", files.ClientCert, "SIDEBOX_AMQP_KEY_FILE", files.ServerKey), "SIDEBOX_AMQP_CERT_FILE: cannot load it with SIDEBOX_AMQP_KEY_FILE: tls: private key does not match public key"},
	} {
		setEnv(t, tt.env)
		err := Load().Check(Broker)
		if err == nil || err.Error() != tt.want {
			t.Errorf("%v: got %v, want %s", tt.env, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), secret) {
			t.Errorf("error shows the password: %v", err)
		}
	}
}
