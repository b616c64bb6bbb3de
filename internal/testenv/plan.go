package testenv

import (
	"context"
	"database/sql"
	"encoding/json"
	"testing"
)

// PlanNode is a node of EXPLAIN (FORMAT JSON), with the fields the plan tests read.
type PlanNode struct {
	NodeType     string     `json:"Node Type"`
	RelationName string     `json:"Relation Name"`
	IndexName    string     `json:"Index Name"`
	SharedHit    int64      `json:"Shared Hit Blocks"`
	SharedRead   int64      `json:"Shared Read Blocks"`
	Plans        []PlanNode `json:"Plans"`
}

// ReadPlan reads the plan of one statement from EXPLAIN (FORMAT JSON).
func ReadPlan(t testing.TB, raw []byte) PlanNode {
	t.Helper()
	var plans []struct {
		Plan PlanNode `json:"Plan"`
	}
	if err := json.Unmarshal(raw, &plans); err != nil || len(plans) != 1 {
		t.Fatalf("cannot read the plan: %v", err)
	}
	return plans[0].Plan
}

// Walk calls f for n and every node below it.
func (n PlanNode) Walk(f func(PlanNode)) {
	f(n)
	for _, c := range n.Plans {
		c.Walk(f)
	}
}

// Buffers is the number of shared buffers the plan read (EXPLAIN's BUFFERS option).
func (n PlanNode) Buffers() int64 { return n.SharedHit + n.SharedRead }

// Explain runs stmt (an EXPLAIN (FORMAT JSON) ...) on conn in a transaction that first
// runs settings, rolls the transaction back and returns the plan's JSON. The session's
// prepared statements and their plans are conn's.
func Explain(t testing.TB, conn *sql.Conn, settings, stmt string) []byte {
	t.Helper()
	ctx := context.Background()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, settings); err != nil {
		t.Fatal(err)
	}
	var raw []byte
	if err := tx.QueryRowContext(ctx, stmt).Scan(&raw); err != nil {
		t.Fatalf("%s: %v", stmt, err)
	}
	return raw
}
