package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestJSON(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(&buf, "warn", "json")
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hidden")
	log.Warn("shown")
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("not one JSON line: %q: %v", buf.String(), err)
	}
	if line["msg"] != "shown" || line["level"] != "warn" || line["ts"] == nil {
		t.Errorf("line = %v", line)
	}
}

func TestConsole(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(&buf, "DEBUG", "console")
	if err != nil {
		t.Fatal(err)
	}
	log.Debug("hello")
	if !strings.Contains(buf.String(), "DEBUG\thello") {
		t.Errorf("output = %q", buf.String())
	}
}

func TestBad(t *testing.T) {
	if _, err := New(&bytes.Buffer{}, "loud", "json"); err == nil {
		t.Error("level loud accepted")
	}
	if _, err := New(&bytes.Buffer{}, "info", "xml"); err == nil {
		t.Error("format xml accepted")
	}
}
