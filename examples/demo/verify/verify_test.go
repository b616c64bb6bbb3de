package verify_test

import (
	"slices"
	"testing"

	"github.com/sidebox/sidebox/examples/demo/verify"
	"github.com/sidebox/sidebox/internal/testenv"
)

func TestCompare(t *testing.T) {
	db, _ := testenv.DB(t) // both services' tables in one database will do here
	for _, q := range []string{
		`CREATE TABLE orders (id bigint PRIMARY KEY)`,
		`CREATE TABLE shipments (order_id bigint NOT NULL)`,
		`INSERT INTO orders VALUES (1), (2), (3), (4)`,
		`INSERT INTO shipments VALUES (1), (2), (2), (4), (9)`,
	} {
		if _, err := db.ExecContext(t.Context(), q); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := verify.Compare(t.Context(), db, db)
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || rep.Orders != 4 || rep.Shipments != 5 ||
		!slices.Equal(rep.Missing, []int64{3}) || !slices.Equal(rep.Duplicated, []int64{2}) || !slices.Equal(rep.Phantom, []int64{9}) {
		t.Errorf("Compare = %+v", rep)
	}

	if _, err := db.ExecContext(t.Context(), `TRUNCATE shipments; INSERT INTO shipments VALUES (1), (2), (3), (4)`); err != nil {
		t.Fatal(err)
	}
	if rep, err := verify.Compare(t.Context(), db, db); err != nil || !rep.OK() {
		t.Errorf("Compare = %+v, %v; want OK", rep, err)
	}
}
