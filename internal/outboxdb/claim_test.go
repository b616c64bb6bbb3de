package outboxdb

import (
	"strings"
	"testing"
)

func TestTruncateKeepsValidText(t *testing.T) {
	if got := Truncate("a\x00b", 10); got != "ab" {
		t.Errorf("Truncate with NUL = %q", got)
	}
	got := Truncate(strings.Repeat("é", 10), 5) // cuts a two-byte rune in half
	if got != "éé..." {
		t.Errorf("Truncate = %q", got)
	}
}
