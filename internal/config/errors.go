package config

import "strings"

// Error is one invalid variable. It prints as
// `SIDEBOX_BATCH_SIZE: must be between 1 and 10000, got 0`.
//
// It is sidebox's one configuration error: Check returns them, FromComponent turns the
// components' own (relay, inbox, webhook) into them, and the CLI exits with code 2 on
// any error holding one.
type Error struct {
	Var     string
	Problem string
}

func (e *Error) Error() string { return e.Var + ": " + e.Problem }

// Errors is every problem found by one Check, one per line when printed.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.As find each *Error.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}
