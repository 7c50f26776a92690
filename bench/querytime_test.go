package main

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/families"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// The clock times the families service's page query, once per call, and
// nothing else the call sends (its scope, its audit record); stopped, it
// times nothing.
func TestQueryClockTimesTheListQueryAlone(t *testing.T) {
	_, schema := pgtest.Schema(t, families.Migrations()...)
	iss, err := auth.NewIssuer("https://bench.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	env := &benchEnv{issuer: iss}
	clock, stop := startQueryClock()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := families.New(pgtest.App(t, schema), families.Config{})
	conn, err := startGRPC(ctx, env, families.Policy(), srv.Auditor(), func(s *grpc.Server) { familiesv1.RegisterFamiliesServiceServer(s, srv) })
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := familiesv1.NewFamiliesServiceClient(conn)
	tctx := auth.WithToken(ctx, iss.MustMint(auth.TokenOptions{Subject: "t", Clinic: "north", Roles: []auth.Role{auth.RoleCounselor}, TTL: time.Hour}))
	for range 3 {
		if _, err := c.CreateFamily(tctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north",
			Family: &familiesv1.Family{LovedOne: &familiesv1.LovedOne{GivenName: "X"}, Counselor: "c-1"}}); err != nil {
			t.Fatal(err)
		}
	}
	var whole time.Duration
	list := func() {
		t.Helper()
		t0 := time.Now()
		resp, err := c.ListFamilies(tctx, &familiesv1.ListFamiliesRequest{Parent: "clinics/north"})
		if err != nil || len(resp.GetFamilies()) != 3 {
			t.Fatalf("ListFamilies: %d, %v", len(resp.GetFamilies()), err)
		}
		whole = time.Since(t0)
	}
	clock.time(listStatement)
	list()
	d, n := clock.take()
	if n != 1 || d <= 0 || d >= whole {
		t.Fatalf("timed %d statements, %v, of a call of %v; want the page query once, in part of the call", n, d, whole)
	}
	clock.time(matchStatement)
	list()
	if d, n := clock.take(); n != 0 {
		t.Fatalf("timed %d statements (%v) of a list when asked for the match", n, d)
	}
	clock.time(listStatement)
	stop()
	list()
	if d, n := clock.take(); n != 0 {
		t.Fatalf("stopped, the clock timed %d statements (%v)", n, d)
	}
}
