package redact

import (
	"strings"
	"testing"
)

func TestSecretsNeverSurvive(t *testing.T) {
	cases := []struct {
		name, in, secret string
		fn               func(string) string
	}{
		{"url password", "postgres://app:s3cr3t@db:5432/app?sslmode=disable", "s3cr3t", URL},
		{"percent-encoded password", "postgres://app:p%40ss%3Aw0rd@db/app", "p%40ss%3Aw0rd", URL},
		{"decoded form too", "postgres://app:p%40ss%3Aw0rd@db/app", "p@ss:w0rd", URL},
		{"amqp", "amqps://guest:hunter2@rabbit:5671/vhost", "hunter2", URL},
		{"sslpassword query", "postgres://app@db/app?sslpassword=keypass&sslmode=require", "keypass", URL},
		{"password query", "postgres://db/app?password=qp1", "qp1", URL},
		{"dsn", "host=db user=app password=s3cr3t dbname=app", "s3cr3t", DSN},
		{"dsn quoted", "host=db password='a b\\'c' dbname=app", "a b", DSN},
		{"dsn via URL", "host=db password=s3cr3t", "s3cr3t", URL},
		{"list", "amqp://u:one@a:5672/,amqp://u:two@b:5672/", "two", URLs},
		{"error text", `dial tcp: lookup postgres://app:s3cr3t@db/app: no such host`, "s3cr3t", Text},
		{"unparseable url", "postgres://app:s3cr3t@[::1:5432/app", "s3cr3t", URL},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := c.fn(c.in)
			if strings.Contains(got, c.secret) {
				t.Fatalf("%q still holds the secret %q", got, c.secret)
			}
			if !strings.Contains(got, Mask) {
				t.Fatalf("%q shows no mask", got)
			}
		})
	}
}

func TestKeepsWhatIsNotSecret(t *testing.T) {
	got := URL("postgres://app:s3cr3t@db:5432/orders?sslmode=disable")
	for _, want := range []string{"app", "db:5432", "/orders", "sslmode=disable"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lost %q", got, want)
		}
	}
	if got := URL("amqp://rabbit:5672/"); got != "amqp://rabbit:5672/" {
		t.Errorf("URL without secret changed to %q", got)
	}
}
