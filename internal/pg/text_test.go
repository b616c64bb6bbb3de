package pg

import (
	"strings"
	"testing"
)

func TestTextIsStorable(t *testing.T) {
	for in, want := range map[string]string{
		"plain":     "plain",
		"a\x00b":    "a\uFFFDb",
		"a\xffb":    "a\uFFFDb",
		"é\x00\xfe": "é\uFFFD\uFFFD",
	} {
		if got := Text(in); got != want {
			t.Errorf("Text(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestErrorTextCutsAtACharacter(t *testing.T) {
	short := strings.Repeat("x", MaxErrorText)
	if got := ErrorText(short); got != short {
		t.Errorf("ErrorText of %d bytes was changed", len(short))
	}
	// 1999 bytes of x, then two-byte runes: the cut falls inside one of them.
	long := strings.Repeat("x", MaxErrorText-1) + strings.Repeat("é", 10)
	want := strings.Repeat("x", MaxErrorText-1) + "..."
	if got := ErrorText(long); got != want {
		t.Errorf("ErrorText cut to %d bytes ending %q, want %d bytes ending in ...", len(got), got[len(got)-5:], len(want))
	}
	if got := ErrorText("a\x00b"); got != "a\uFFFDb" {
		t.Errorf("ErrorText with NUL = %q", got)
	}
}
