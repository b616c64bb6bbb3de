package pg

import (
	"errors"
	"time"

	"github.com/lib/pq"
)

// DeadSelector picks dead rows of an outbox or inbox table for `sidebox dead`; its
// conditions are combined with AND. A selector with no condition picks no row, unless
// All is set.
type DeadSelector struct {
	IDs       []string      // message ids (outbox: uuid text; inbox: message_id)
	Keys      []string      // ordering keys
	OlderThan time.Duration // written (received) more than this long ago, database clock; 0: any age
	All       bool          // every dead row
}

// Empty reports whether s picks no row: no condition and not All.
func (s DeadSelector) Empty() bool {
	return !s.All && len(s.IDs) == 0 && len(s.Keys) == 0 && s.OlderThan <= 0
}

// ErrNoSelector is returned when a change of dead rows is asked for without a
// selector, so that no command changes every dead row by accident.
var ErrNoSelector = errors.New("no dead rows selected: give ids, keys, an age or all")

// Args returns the selector's parameters: $1 ids (text[]), $2 keys (text[]), $3 age in
// seconds (float8); NULL for a condition not set.
func (s DeadSelector) Args() []any {
	var ids, keys pq.StringArray
	if len(s.IDs) > 0 {
		ids = s.IDs
	}
	if len(s.Keys) > 0 {
		keys = s.Keys
	}
	var age any
	if s.OlderThan > 0 {
		age = s.OlderThan.Seconds()
	}
	return []any{ids, keys, age}
}
