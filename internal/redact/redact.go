// Package redact removes secrets from connection strings before they reach a log line,
// an error message or a status page.
package redact

import (
	"net/url"
	"regexp"
	"strings"
)

// Mask replaces every secret.
const Mask = "xxxxx"

var (
	// key=value DSN pairs whose value is secret; the value may be quoted.
	kvSecret = regexp.MustCompile(`(?i)\b(password|sslpassword|sslkey|passfile)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)`)
	// user-info of URLs embedded anywhere in a text: scheme://user:pass@host
	urlUserinfo = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):[^@\s]*@`)
	// secret query parameters.
	querySecret = regexp.MustCompile(`(?i)([?&](?:password|sslpassword|sslkey|passfile|token|secret)=)[^&\s#]*`)
)

// URL returns the URL with its password, and secret query parameters, masked.
// Anything it cannot parse is masked as a whole rather than risk a leak.
func URL(raw string) string {
	if !strings.Contains(raw, "://") {
		return DSN(raw)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return Text(raw)
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), Mask)
	}
	q := u.Query()
	changed := false
	for k := range q {
		switch strings.ToLower(k) {
		case "password", "sslpassword", "sslkey", "passfile", "token", "secret":
			q.Set(k, Mask)
			changed = true
		}
	}
	if changed {
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// DSN masks secrets in a key=value connection string (lib/pq's other syntax).
func DSN(raw string) string {
	return kvSecret.ReplaceAllString(raw, "${1}="+Mask)
}

// URLs redacts a comma-separated list of URLs.
func URLs(raw string) string {
	parts := strings.Split(raw, ",")
	for i, p := range parts {
		parts[i] = URL(strings.TrimSpace(p))
	}
	return strings.Join(parts, ",")
}

// Text masks every secret that appears inside free text, such as a driver's error
// message that quotes the connection string it was given.
func Text(s string) string {
	s = urlUserinfo.ReplaceAllString(s, "${1}:"+Mask+"@")
	s = querySecret.ReplaceAllString(s, "${1}"+Mask)
	return DSN(s)
}
