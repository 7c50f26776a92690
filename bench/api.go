package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/families"
	"github.com/handoff-health/handoff/services/gateway"
	"github.com/handoff-health/handoff/services/grpcclient"
	"github.com/handoff-health/handoff/services/grpcserver"
	"github.com/handoff-health/handoff/services/pgdb"
)

// floor is the least a family API can do with the same database work as
// the families service: a hand-written net/http handler on the same
// PostgreSQL role and row-level security, sending the same statements in the
// same round trips (a create: BEGIN with the clinic scope, the insert, the
// read-back, the audit record with the outbox event, COMMIT; a read: the
// scope with the read of the family and its newest safety screen, then the
// scope with its audit record), with no gRPC, no validation, no tokens and
// no protobuf.
type floor struct{ pool *pgxpool.Pool }

const (
	floorScope  = `SELECT set_config('handoff.clinic', $1, true)`
	floorSelect = `SELECT f.id, f.doc, f.counselor, f.state, f.urgent, f.first_contact_time,
	f.create_time, f.update_time, f.version,
	s.id, s.result, s.safety_plan, s.notes, s.screened_by, s.screen_time, s.create_time
	FROM families f
	LEFT JOIN LATERAL ` + families.LatestScreen + ` s ON true WHERE f.clinic = $1 AND f.id = $2`
	floorInsert = `INSERT INTO families (clinic, id, doc, counselor, state, first_contact_time, create_time, update_time)
		VALUES ($1, $2, $3, $4, 1, now(), now(), now())`
	floorOutbox = `INSERT INTO outbox (clinic, event_type, resource, payload, trace_context) VALUES ($1, $2, $3, $4, $5)`
	floorAudit  = `INSERT INTO audit_log (clinic, subject, roles, method, resource, outcome, request_id, event_time)
		VALUES ($1, $2, $3, $4, $5, $6, $7, clock_timestamp())`
)

// floorFamily is what the floor reads back and returns.
type floorFamily struct {
	ID, Counselor             string
	Doc                       json.RawMessage
	State                     int16
	Urgent                    bool
	First, Created, Updated   time.Time
	Version                   int64
	ScreenID, Notes, Screener *string
	Result                    *int16
	Plan                      *bool
	ScreenTime, ScreenCreated *time.Time
}

func scanFloor(row pgx.Row) (floorFamily, error) {
	var f floorFamily
	err := row.Scan(&f.ID, &f.Doc, &f.Counselor, &f.State, &f.Urgent, &f.First, &f.Created, &f.Updated, &f.Version,
		&f.ScreenID, &f.Result, &f.Plan, &f.Notes, &f.Screener, &f.ScreenTime, &f.ScreenCreated)
	return f, err
}

func (f floor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	const clinic = "bench"
	var (
		fam    floorFamily
		method string
	)
	conn, err := f.pool.Acquire(ctx)
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	if r.Method == http.MethodPost {
		method = "CreateFamily"
		var in struct {
			LovedOne  map[string]any `json:"lovedOne"`
			Counselor string         `json:"counselor"`
		}
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			conn.Release()
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		doc, _ := json.Marshal(map[string]any{"loved_one": in.LovedOne})
		id := aip.NewID()
		// As the service's transactions do: BEGIN carries the scope, and
		// the audit record, which commits with the change, goes with the
		// statement that names what it made.
		begin, ok := pgdb.ScopedBegin(clinic)
		if !ok {
			panic("bench: the floor's clinic is not a well-formed clinic id")
		}
		err = pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{BeginQuery: begin}, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, floorInsert, clinic, id, doc, in.Counselor); err != nil {
				return err
			}
			var err error
			if fam, err = scanFloor(tx.QueryRow(ctx, floorSelect, clinic, id)); err != nil {
				return err
			}
			// A create's record names what it made, so it goes with the
			// statement that names it: the outbox event.
			b := &pgx.Batch{}
			b.Queue(floorAudit, clinic, "bench", []string{"counselor"}, method, "clinics/"+clinic+"/families/"+id, "OK", "")
			b.Queue(floorOutbox, clinic, "family.created", id, doc, nil)
			return tx.SendBatch(ctx, b).Close()
		})
	} else {
		method = "GetFamily"
		b := &pgx.Batch{}
		b.Queue(floorScope, clinic)
		b.Queue(floorSelect, clinic, r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:])
		br := conn.SendBatch(ctx, b)
		if _, err = br.Exec(); err == nil {
			fam, err = scanFloor(br.QueryRow())
		}
		_ = br.Close()
	}
	conn.Release()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	// A read's audit record goes on its own round trip after the work, as
	// the service's interceptor writes it.
	name := "clinics/" + clinic + "/families/" + fam.ID
	if r.Method != http.MethodPost {
		ab := &pgx.Batch{}
		ab.Queue(floorScope, clinic)
		ab.Queue(floorAudit, clinic, "bench", []string{"counselor"}, method, name, "OK", "")
		if err := f.pool.SendBatch(ctx, ab).Close(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"name": name, "doc": fam.Doc, "counselor": fam.Counselor,
		"state": fam.State, "etag": aip.Etag(fam.Version)})
}

// apiBench measures create and get of a family through the floor, the gRPC
// service and the REST gateway, at the same concurrency, in one run.
func apiBench(ctx context.Context, env *benchEnv, conc, rounds int, d time.Duration) (map[string]result, error) {
	owner, db, err := env.schema(ctx, "families", families.Migrations())
	if err != nil {
		return nil, err
	}
	defer closePools(owner, db)
	// The floor gets a pool of its own, as the same role with the same size.
	floorDB, err := pgdb.OpenApp(ctx, env.dsn, env.prefix+"families")
	if err != nil {
		return nil, err
	}
	defer floorDB.Pool.Close()
	srvImpl := families.New(db, families.Config{})
	srv, err := grpcserver.New(grpcserver.Config{Logger: slog.New(slog.DiscardHandler), Verifier: env.issuer.Verifier(),
		Policy: families.Policy(), Audit: srvImpl.Auditor()})
	if err != nil {
		return nil, err
	}
	familiesv1.RegisterFamiliesServiceServer(srv.Server, srvImpl)
	glis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = srv.Serve(sctx, glis, time.Second) }()
	addr := glis.Addr().String()

	gw, err := gateway.New(ctx, gateway.Config{Log: slog.New(slog.DiscardHandler), FamiliesAddr: addr, InterventionsAddr: addr,
		ReferralsAddr: addr, Verifier: env.issuer.Verifier()})
	if err != nil {
		return nil, err
	}
	defer gw.Close()
	gwURL, closeGW := serve(gw)
	defer closeGW()
	floorURL, closeFloor := serve(floor{pool: floorDB.Pool})
	defer closeFloor()

	conn, err := grpcclient.Dial(addr, grpcclient.Config{})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	client := familiesv1.NewFamiliesServiceClient(conn)
	token := env.issuer.MustMint(auth.TokenOptions{Subject: "bench", Clinic: "bench", Roles: []auth.Role{auth.RoleCounselor}, TTL: time.Hour})
	gctx := auth.WithToken(ctx, token)
	// Enough idle connections for an open-loop burst, so the floor and the
	// gateway do not dial mid-run where gRPC reuses its one connection.
	httpc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	body := []byte(`{"lovedOne":{"givenName":"Bench"},"counselor":"c-1"}`)
	post := func(ctx context.Context, url string, auth bool) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if auth {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		return do(httpc, req)
	}
	get := func(ctx context.Context, url string, auth bool) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if auth {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		return do(httpc, req)
	}
	fam, err := familyToRead(gctx, client, "clinics/bench")
	if err != nil {
		return nil, err
	}
	id := aip.ID(fam.GetName())
	// Each path by name: "floor create", "grpc get" and so on.
	ops := map[string]func(ctx context.Context) error{
		"floor create": func(ctx context.Context) error { return post(ctx, floorURL+"/families", false) },
		"grpc create": func(ctx context.Context) error {
			_, err := client.CreateFamily(auth.WithToken(ctx, token), &familiesv1.CreateFamilyRequest{Parent: "clinics/bench",
				Family: &familiesv1.Family{LovedOne: &familiesv1.LovedOne{GivenName: "Bench"}, Counselor: "c-1"}})
			return err
		},
		"gateway create": func(ctx context.Context) error { return post(ctx, gwURL+"/v1/clinics/bench/families", true) },
		"floor get":      func(ctx context.Context) error { return get(ctx, floorURL+"/families/"+id, false) },
		"grpc get": func(ctx context.Context) error {
			_, err := client.GetFamily(auth.WithToken(ctx, token), &familiesv1.GetFamilyRequest{Name: fam.GetName()})
			return err
		},
		"gateway get": func(ctx context.Context) error { return get(ctx, gwURL+"/v1/"+fam.GetName(), true) },
	}
	out := map[string]result{}
	add := func(rs map[string]result) {
		for k, v := range rs {
			out[k] = v
		}
	}
	for _, op := range []string{"create", "get"} {
		rs, err := interleave(rounds, []string{"floor " + op, "grpc " + op, "gateway " + op}, func(name string) (result, error) {
			fn := ops[name]
			r := saturate(ctx, conc, d, func(ctx context.Context, _, _ int) error { return fn(ctx) })
			if r.Errors > 0 || r.Ops == 0 {
				return r, fmt.Errorf("%d errors in %d operations", r.Errors, r.Errors+r.Ops)
			}
			return r, nil
		})
		if err != nil {
			return nil, err
		}
		add(rs)
	}
	// Below saturation: half of the gRPC throughput, open loop, through
	// the service and, at the same offered rate, through the floor and
	// through pgbench sending the floor's statements (the steal sampler
	// runs alongside each, the disk probe only with -probe-disk); a quarter of saturation tells queueing apart from
	// hiccups that hit any single request. The gateway runs at half of
	// its own saturation.
	pgbenchRuns := map[string]struct {
		script string
		vars   map[string]string
	}{
		"get":    {pgbenchGet, map[string]string{"clinic": "bench", "id": id, "name": fam.GetName()}},
		"create": {pgbenchCreate, map[string]string{"clinic": "bench", "doc": `{"loved_one":{"givenName":"Bench"}}`}},
	}
	_, lookErr := exec.LookPath("pgbench")
	var pgbenchDB string
	if lookErr == nil {
		if pgbenchDB, err = pgbenchDSN(env.dsn, pgdb.AppRole, env.prefix+"families"); err != nil {
			return nil, err
		}
	}
	// The saturation runs leave the database with dirty pages and its
	// timed checkpoint (every 5 minutes by default) due at any moment: one
	// starting during the open-loop runs, with its flushes and the
	// full-page writes after it, lands on whichever rows it meets, the
	// floor's, pgbench's or the service's, and makes them incomparable.
	// Checkpointed here, the next is due after the runs (about 3 minutes).
	env.checkpoint(ctx)
	for _, op := range []string{"get", "create"} {
		half, quarter := "grpc "+op+" at half saturation", "grpc "+op+" at quarter saturation"
		floorHalf, dbHalf := "floor "+op+" at half saturation", "pgbench "+op+" at half saturation"
		gwHalf := "gateway " + op + " at half saturation"
		names := []string{half, floorHalf, quarter, gwHalf}
		if lookErr == nil {
			names = append(names, dbHalf)
		}
		rate := out["grpc "+op].Throughput / 2
		rs, err := interleave(rounds, names, func(name string) (result, error) {
			switch name {
			case half:
				return openLoop(ctx, rate, d, ops["grpc "+op])
			case floorHalf:
				return openLoop(ctx, rate, d, ops["floor "+op])
			case gwHalf:
				// The gateway at half of its own saturation, the way a
				// client of the REST API meets it.
				return openLoop(ctx, out["gateway "+op].Throughput/2, d, ops["gateway "+op])
			case dbHalf:
				p := pgbenchRuns[op]
				return pgbenchLoop(ctx, pgbenchDB, p.script, p.vars, int(floorDB.Pool.Config().MaxConns), rate, d)
			default:
				return openLoop(ctx, rate/2, d, ops["grpc "+op])
			}
		})
		if err != nil {
			return nil, err
		}
		add(rs)
	}
	return out, nil
}

// familyToRead creates the family the get runs read, with a safety screen
// so that each read does its join.
func familyToRead(ctx context.Context, c familiesv1.FamiliesServiceClient, parent string) (*familiesv1.Family, error) {
	fam, err := c.CreateFamily(ctx, &familiesv1.CreateFamilyRequest{Parent: parent, Family: &familiesv1.Family{
		LovedOne: &familiesv1.LovedOne{GivenName: "Bench"}, Counselor: "c-1"}})
	if err != nil {
		return nil, err
	}
	if _, err := c.CreateSafetyScreen(ctx, &familiesv1.CreateSafetyScreenRequest{Parent: fam.GetName(),
		SafetyScreen: &familiesv1.SafetyScreen{Result: familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK}}); err != nil {
		return nil, err
	}
	return fam, nil
}

func do(c *http.Client, req *http.Request) error {
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %d", req.Method, req.URL.Path, resp.StatusCode)
	}
	return nil
}

// serve serves h on a loopback port.
func serve(h http.Handler) (string, func()) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	s := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.Serve(lis) }()
	return "http://" + lis.Addr().String(), func() { _ = s.Close() }
}
