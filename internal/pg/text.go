package pg

import (
	"strings"
	"unicode/utf8"
)

// MaxErrorText is how many bytes of an error's message the outbox and the inbox keep in
// last_error.
const MaxErrorText = 2000

// Text makes s storable in PostgreSQL text and jsonb: valid UTF-8 without U+0000, each
// invalid byte sequence and each NUL replaced by U+FFFD.
func Text(s string) string {
	if utf8.ValidString(s) && !strings.ContainsRune(s, 0) {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// ErrorText is s as storable text (Text), cut at a character boundary to at most
// MaxErrorText bytes followed by "..." when it is longer.
func ErrorText(s string) string {
	return truncate(Text(s), MaxErrorText)
}

// truncate cuts valid UTF-8 s to at most n bytes at a character boundary, and marks a
// cut with "...".
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "..."
}
