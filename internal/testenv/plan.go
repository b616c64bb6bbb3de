package testenv

import (
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
