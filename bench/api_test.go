package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/handoff-health/handoff/services/families"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// The floor does over HTTP what the service does in the database: a create
// writes its family, outbox event and audit record in one transaction, the
// record with the event as the service's stamp of a create is (naming what
// it made); a read returns the family and
// writes its own record.
func TestFloorWritesWhatTheServiceWrites(t *testing.T) {
	owner, schema := pgtest.Schema(t, families.Migrations()...)
	url, stop := serve(floor{pool: pgtest.App(t, schema).Pool})
	defer stop()
	ctx := context.Background()

	resp, err := http.Post(url+"/families", "application/json", bytes.NewReader([]byte(`{"lovedOne":{"givenName":"Bench"},"counselor":"c-1"}`)))
	if err != nil {
		t.Fatal(err)
	}
	var created struct{ Name, Counselor string }
	err = json.NewDecoder(resp.Body).Decode(&created)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || created.Counselor != "c-1" {
		t.Fatalf("create: %d %+v %v", resp.StatusCode, created, err)
	}
	var famXID, recXID, outXID string
	var famCmd, recCmd, outCmd int
	if err := owner.QueryRow(ctx, `SELECT f.xmin::text, f.cmin::text::int, a.xmin::text, a.cmin::text::int, o.xmin::text, o.cmin::text::int
		FROM families f JOIN audit_log a ON a.resource = $1 AND a.method = 'CreateFamily'
		JOIN outbox o ON o.event_type = 'family.created' AND o.resource = f.id
		WHERE 'clinics/bench/families/' || f.id = $1`, created.Name).Scan(&famXID, &famCmd, &recXID, &recCmd, &outXID, &outCmd); err != nil {
		t.Fatalf("create %s: %v", created.Name, err)
	}
	if famXID != recXID || famXID != outXID || recCmd <= famCmd || outCmd != recCmd+1 {
		t.Errorf("family in transaction %s (command %d), record in %s (command %d), event in %s (command %d): want one transaction, the record just before the event",
			famXID, famCmd, recXID, recCmd, outXID, outCmd)
	}

	resp, err = http.Get(url + "/families/" + created.Name[len("clinics/bench/families/"):])
	if err != nil {
		t.Fatal(err)
	}
	var read struct{ Name string }
	err = json.NewDecoder(resp.Body).Decode(&read)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || read.Name != created.Name {
		t.Fatalf("get: %d %+v %v", resp.StatusCode, read, err)
	}
	var n int
	if err := owner.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE method = 'GetFamily' AND resource = $1`, created.Name).Scan(&n); err != nil || n != 1 {
		t.Errorf("%d read records (%v), want 1", n, err)
	}
}
