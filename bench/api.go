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
)

// floor is the least a family API can do: a hand-written net/http handler
// running the same SQL as the families service (insert with its outbox
// event; the read with the newest safety screen), with no gRPC, no
// validation, no tokens, no row-level security and no audit.
type floor struct{ pool *pgxpool.Pool }

const floorSelect = `SELECT f.id, f.doc, f.counselor, f.state, f.urgent, f.first_contact_time, f.create_time, f.update_time, f.version,
	s.id, s.result FROM families f
	LEFT JOIN LATERAL (SELECT * FROM safety_screens s WHERE s.clinic = f.clinic AND s.family_id = f.id
		ORDER BY s.screen_time DESC, s.id DESC LIMIT 1) s ON true
	WHERE f.clinic = $1 AND f.id = $2`

func (f floor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	switch {
	case r.Method == http.MethodPost:
		var in struct {
			LovedOne  map[string]any `json:"lovedOne"`
			Counselor string         `json:"counselor"`
		}
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		doc, _ := json.Marshal(map[string]any{"loved_one": in.LovedOne})
		id := aip.NewID()
		err := pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO families (clinic, id, doc, counselor, state, first_contact_time) VALUES ($1, $2, $3, $4, 1, now())`,
				"bench", id, doc, in.Counselor); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO outbox (clinic, event_type, resource, payload) VALUES ($1, $2, $3, $4)`,
				"bench", "family.created", id, doc)
			return err
		})
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"name": "clinics/bench/families/" + id})
	default:
		id := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
		var (
			fid, counselor      string
			doc                 []byte
			state               int16
			urgent              bool
			first, created, upd time.Time
			version             int64
			screenID            *string
			screenResult        *int16
		)
		if err := f.pool.QueryRow(ctx, floorSelect, "bench", id).Scan(&fid, &doc, &counselor, &state, &urgent, &first, &created, &upd,
			&version, &screenID, &screenResult); err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"name": "clinics/bench/families/" + fid, "doc": json.RawMessage(doc),
			"counselor": counselor, "state": state, "etag": aip.Etag(version)})
	}
}

// apiBench measures create and get of a family through the floor, the gRPC
// service and the REST gateway, at the same concurrency, in one run.
func apiBench(ctx context.Context, env *benchEnv, conc int, d time.Duration) (map[string]result, error) {
	owner, db, err := env.schema(ctx, "families", families.Migrations())
	if err != nil {
		return nil, err
	}
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
	floorURL, closeFloor := serve(floor{pool: owner})
	defer closeFloor()

	conn, err := grpcclient.Dial(addr, grpcclient.Config{})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	client := familiesv1.NewFamiliesServiceClient(conn)
	token := env.issuer.MustMint(auth.TokenOptions{Subject: "bench", Clinic: "bench", Roles: []auth.Role{auth.RoleCounselor}, TTL: time.Hour})
	gctx := auth.WithToken(ctx, token)
	httpc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc * 2}}
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
	// One family to read, with a safety screen so the read does its join.
	fam, err := client.CreateFamily(gctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/bench", Family: &familiesv1.Family{
		LovedOne: &familiesv1.LovedOne{GivenName: "Bench"}, Counselor: "c-1"}})
	if err != nil {
		return nil, err
	}
	if _, err := client.CreateSafetyScreen(gctx, &familiesv1.CreateSafetyScreenRequest{Parent: fam.GetName(),
		SafetyScreen: &familiesv1.SafetyScreen{Result: familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK}}); err != nil {
		return nil, err
	}
	id := aip.ID(fam.GetName())
	out := map[string]result{}
	runs := []struct {
		name string
		op   func(ctx context.Context, w, i int) error
	}{
		{"floor create", func(ctx context.Context, _, _ int) error { return post(ctx, floorURL+"/families", false) }},
		{"grpc create", func(ctx context.Context, _, _ int) error {
			_, err := client.CreateFamily(auth.WithToken(ctx, token), &familiesv1.CreateFamilyRequest{Parent: "clinics/bench",
				Family: &familiesv1.Family{LovedOne: &familiesv1.LovedOne{GivenName: "Bench"}, Counselor: "c-1"}})
			return err
		}},
		{"gateway create", func(ctx context.Context, _, _ int) error { return post(ctx, gwURL+"/v1/clinics/bench/families", true) }},
		{"floor get", func(ctx context.Context, _, _ int) error { return get(ctx, floorURL+"/families/"+id, false) }},
		{"grpc get", func(ctx context.Context, _, _ int) error {
			_, err := client.GetFamily(auth.WithToken(ctx, token), &familiesv1.GetFamilyRequest{Name: fam.GetName()})
			return err
		}},
		{"gateway get", func(ctx context.Context, _, _ int) error { return get(ctx, gwURL+"/v1/"+fam.GetName(), true) }},
	}
	for _, r := range runs {
		out[r.name] = closedLoop(ctx, conc, d, r.op)
		if out[r.name].Errors > 0 || out[r.name].Ops == 0 {
			return nil, fmt.Errorf("%s: %d errors in %d operations", r.name, out[r.name].Errors, out[r.name].Ops)
		}
	}
	// Below saturation: half of the gRPC throughput, open loop.
	for _, op := range []string{"get", "create"} {
		rate := out["grpc "+op].Throughput / 2
		var fn func(ctx context.Context, i int) error
		if op == "get" {
			fn = func(ctx context.Context, _ int) error {
				_, err := client.GetFamily(gctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
				return err
			}
		} else {
			fn = func(ctx context.Context, _ int) error {
				_, err := client.CreateFamily(gctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/bench",
					Family: &familiesv1.Family{LovedOne: &familiesv1.LovedOne{GivenName: "Bench"}, Counselor: "c-1"}})
				return err
			}
		}
		out["grpc "+op+" at half saturation"] = openLoop(ctx, rate, d, fn)
	}
	return out, nil
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
