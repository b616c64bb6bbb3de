package testenv

import (
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"os"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func TestPostgresTLS(t *testing.T) {
	t.Parallel()
	files := NewTLS(t)
	pg := StartPostgres(t, PostgresTLS(files))
	if !strings.Contains(pg.URL(), "sslmode=verify-full") {
		t.Fatalf("URL = %s", pg.URL())
	}
	db, err := sql.Open("postgres", pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var ssl bool
	if err := db.QueryRow(`SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()`).Scan(&ssl); err != nil || !ssl {
		t.Fatalf("connection over TLS: %v, %v", ssl, err)
	}

	plain := strings.Replace(pg.URL(), "sslmode=verify-full", "sslmode=disable", 1)
	if err := ping(plain); err == nil || !strings.Contains(err.Error(), "no encryption") {
		t.Errorf("connection without TLS: %v, want refused by pg_hba.conf", err)
	}
	wrong := strings.Replace(pg.URL(), "sslrootcert=", "sslrootcert="+strings.ReplaceAll(NewTLS(t).CA, "/", "%2F")+"&x=", 1)
	if err := ping(wrong); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("connection with the wrong CA: %v, want refused", err)
	}
}

func ping(u string) error {
	db, err := sql.Open("postgres", u)
	if err != nil {
		return err
	}
	defer db.Close()
	return db.Ping()
}

func TestRabbitMQTLSAndAlarm(t *testing.T) {
	t.Parallel()
	files := NewTLS(t)
	rmq := StartRabbitMQ(t, RabbitMQTLS(files))

	pool := x509.NewCertPool()
	ca, err := os.ReadFile(files.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(ca)
	cert, err := tls.LoadX509KeyPair(files.ClientCert, files.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := amqp.DialTLS(rmq.TLSURL(), &tls.Config{RootCAs: pool}); err == nil {
		t.Error("TLS connection without a client certificate accepted")
	}
	conn, err := amqp.DialConfig(rmq.TLSURL(), amqp.Config{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}},
		Properties:      amqp.Table{"connection_name": "tls-test"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	blocked := conn.NotifyBlocked(make(chan amqp.Blocking, 2))
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	queue := Name(t, "tls")
	if _, err := ch.QueueDeclare(queue, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	publishConfirmed(t, ch, queue, "over TLS")

	rmq.MemoryAlarm(t, true)
	if err := ch.Publish("", queue, false, false, amqp.Publishing{Body: []byte("during the alarm")}); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-blocked:
		if !b.Active || !strings.Contains(b.Reason, "memory") {
			t.Errorf("blocking = %+v", b)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no connection.blocked after the alarm")
	}
	found := false
	for _, c := range rmq.Connections(t) {
		if c.Name == "tls-test" {
			found = true
			if c.State != "blocked" {
				t.Errorf("connection state %q, want blocked", c.State)
			}
		}
	}
	if !found {
		t.Errorf("connection tls-test not listed: %+v", rmq.Connections(t))
	}
	rmq.MemoryAlarm(t, false)
	select {
	case b := <-blocked:
		if b.Active {
			t.Errorf("blocking = %+v, want unblocked", b)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no connection.unblocked after the alarm cleared")
	}
}
