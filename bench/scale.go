package main

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"time"

	"google.golang.org/grpc"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/families"
	"github.com/handoff-health/handoff/services/grpcclient"
	"github.com/handoff-health/handoff/services/grpcserver"
	"github.com/handoff-health/handoff/services/referrals"
)

// startGRPC serves a service on loopback the way production does (tokens,
// policy, validation, audit) and returns a client connection to it.
func startGRPC(ctx context.Context, env *benchEnv, policy grpcserver.Policy, audit grpcserver.Auditor,
	register func(*grpc.Server)) (*grpc.ClientConn, error) {
	srv, err := grpcserver.New(grpcserver.Config{Logger: slog.New(slog.DiscardHandler), Verifier: env.issuer.Verifier(), Policy: policy, Audit: audit})
	if err != nil {
		return nil, err
	}
	register(srv.Server)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() { _ = srv.Serve(ctx, lis, time.Second) }()
	return grpcclient.Dial(lis.Addr().String(), grpcclient.Config{})
}

type scaleResult struct {
	Small, Big                    int
	ListFirst, ListDeep, Match    [2]result // whole calls, [small, big]
	ListFirstRatio, ListDeepRatio float64
	MatchRatio                    float64
	// The same samples' query alone (see queryClock), and its ratios.
	ListFirstQuery, ListDeepQuery, MatchQuery [2]result
	ListFirstQueryRatio, ListDeepQueryRatio   float64
	MatchQueryRatio                           float64
	InsertSmall, InsertBig                    time.Duration
	Profiles                                  [2]int // distinct program profiles (see referrals.MatchPrograms)
}

// scaleClinics are the two sizes' clinics, each in schemas of its own.
var scaleClinics = [2]string{"small", "big"}

// scaleSchema names the schema of a service's tables for one size.
func scaleSchema(service, clinic string) string { return "scale_" + service + "_" + clinic }

// scaleSchemas are every schema the scale section makes, for dropping
// once it is done.
func scaleSchemas() []string {
	var out []string
	for _, c := range scaleClinics {
		out = append(out, scaleSchema("families", c), scaleSchema("referrals", c))
	}
	return out
}

// scaleBench compares list and match latency over a small and a big
// clinic, each in tables of its own (a schema per size, as a deployment
// of that size would have): keyset pagination and indexes should keep the
// big one close to the small one. Both sizes are read warm, from memory
// (a million rows fit in this machine's page cache): the ratio is of the
// work each query does, not of the disk. Each sample is timed whole and,
// by queryClock, its query alone.
func scaleBench(ctx context.Context, env *benchEnv, cfg config) (*scaleResult, error) {
	clock, stopClock := startQueryClock()
	defer stopClock()
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	r := &scaleResult{Small: cfg.small, Big: cfg.big}
	clinics := scaleClinics
	var fams [2]familiesv1.FamiliesServiceClient
	var refs [2]referralsv1.ReferralsServiceClient
	for i, n := range [2]int{cfg.small, cfg.big} {
		famOwner, famDB, err := env.schema(ctx, scaleSchema("families", clinics[i]), families.Migrations())
		if err != nil {
			return nil, err
		}
		defer closePools(famOwner, famDB)
		refOwner, refDB, err := env.schema(ctx, scaleSchema("referrals", clinics[i]), referrals.Migrations())
		if err != nil {
			return nil, err
		}
		defer closePools(refOwner, refDB)
		famSrv := families.New(famDB, families.Config{})
		famConn, err := startGRPC(sctx, env, families.Policy(), famSrv.Auditor(), func(s *grpc.Server) { familiesv1.RegisterFamiliesServiceServer(s, famSrv) })
		if err != nil {
			return nil, err
		}
		defer famConn.Close()
		refSrv := referrals.New(refDB, referrals.Config{})
		refConn, err := startGRPC(sctx, env, referrals.Policy(), refSrv.Auditor(), func(s *grpc.Server) { referralsv1.RegisterReferralsServiceServer(s, refSrv) })
		if err != nil {
			return nil, err
		}
		defer refConn.Close()
		fams[i], refs[i] = familiesv1.NewFamiliesServiceClient(famConn), referralsv1.NewReferralsServiceClient(refConn)

		t0 := time.Now()
		// Ids as the service makes them sort (time-ordered), here a zero-padded counter.
		if _, err := famOwner.Exec(ctx, `INSERT INTO families (clinic, id, doc, counselor, state, first_contact_time)
			SELECT $1, 'f' || lpad(i::text, 9, '0'), '{"loved_one":{"given_name":"X"}}', 'c-' || (i % 50), 1 + (i % 3), now()
			FROM generate_series(1, $2) i`, clinics[i], n); err != nil {
			return nil, fmt.Errorf("seed families: %w", err)
		}
		if _, err := refOwner.Exec(ctx, `INSERT INTO programs (clinic, id, doc, services, payments, telehealth, same_day_intake,
			same_day_induction, available_slots, waitlist, locality, postal_code, languages)
			SELECT $1, 'p' || lpad(i::text, 9, '0'), jsonb_build_object('display_name', 'Program ' || i),
				CASE i % 3 WHEN 0 THEN '{2,5}'::smallint[] WHEN 1 THEN '{9,10}'::smallint[] ELSE '{7}'::smallint[] END,
				CASE i % 2 WHEN 0 THEN '{1}'::smallint[] ELSE '{5,6}'::smallint[] END,
				i % 4 = 0, i % 5 = 0, i % 7 = 0, i % 6, i % 11 = 0,
				'town' || (i % 100), lpad((i % 1000)::text, 5, '0'),
				CASE i % 13 WHEN 0 THEN '{en,es}'::text[] WHEN 1 THEN '{es}'::text[] ELSE '{en}'::text[] END
			FROM generate_series(1, $2) i`, clinics[i], n); err != nil {
			return nil, fmt.Errorf("seed programs: %w", err)
		}
		if i == 0 {
			r.InsertSmall = time.Since(t0)
		} else {
			r.InsertBig = time.Since(t0)
		}
		if err := refOwner.QueryRow(ctx, `SELECT count(DISTINCT profile) FROM programs WHERE clinic = $1`, clinics[i]).Scan(&r.Profiles[i]); err != nil {
			return nil, fmt.Errorf("count profiles: %w", err)
		}
		// VACUUM as well as ANALYZE: a table a clinic has used for a while
		// has been vacuumed, so its index-only scans skip the heap; a table
		// loaded a moment ago has no visibility map yet, and the big one
		// would pay for heap reads no running system pays for.
		for _, q := range []string{"VACUUM (ANALYZE) " + env.prefix + scaleSchema("families", clinics[i]) + ".families",
			"VACUUM (ANALYZE) " + env.prefix + scaleSchema("referrals", clinics[i]) + ".programs"} {
			if _, err := famOwner.Exec(ctx, q); err != nil {
				return nil, err
			}
		}
	}
	// The load and its VACUUM leave dirty pages; a checkpoint spread over
	// the samples that follow would slow some of them and not others.
	env.checkpoint(ctx)
	samples, matchSamples, warm := 200, 100, 10
	if cfg.smoke {
		samples, matchSamples, warm = 20, 3, 1
	}
	// Each query runs on both clinics, taking turns, so that the two
	// sides of a ratio share whatever else the machine is doing. Each
	// sample sends one statement that begins with prefix, which the clock
	// times too; the warm-up's come first, and are dropped.
	both := func(n int, prefix string, op func(ctx context.Context, i int, parent string) error) (whole, query [2]result, err error) {
		var ops [2]func(context.Context) error
		var lat [2][]time.Duration
		for i, clinic := range clinics {
			token := env.issuer.MustMint(auth.TokenOptions{Subject: "bench", Clinic: clinic, Roles: []auth.Role{auth.RoleCounselor}, TTL: time.Hour})
			ops[i] = func(ctx context.Context) error {
				clock.time(prefix)
				if err := op(auth.WithToken(ctx, token), i, "clinics/"+clinic); err != nil {
					return err
				}
				d, k := clock.take()
				if k != 1 {
					return fmt.Errorf("%d statements beginning %q timed in a sample; want 1", k, prefix)
				}
				lat[i] = append(lat[i], d)
				return nil
			}
		}
		if whole, err = paired(ctx, n, warm, ops); err != nil {
			return whole, query, err
		}
		for i := range lat {
			var spent time.Duration
			for _, d := range lat[i][warm:] {
				spent += d
			}
			query[i] = summarize(lat[i][warm:], 0, spent)
		}
		return whole, query, nil
	}
	var err error
	if r.ListFirst, r.ListFirstQuery, err = both(samples, listStatement, func(ctx context.Context, i int, parent string) error {
		_, err := fams[i].ListFamilies(ctx, &familiesv1.ListFamiliesRequest{Parent: parent, PageSize: 50})
		return err
	}); err != nil {
		return nil, err
	}
	// A page in the middle, resumed from a token as a client would, at a
	// place drawn anew for each sample (a quarter to three quarters in):
	// the same page every time would be read from the cache every time.
	if r.ListDeep, r.ListDeepQuery, err = both(samples, listStatement, func(ctx context.Context, i int, parent string) error {
		size := [2]int{cfg.small, cfg.big}[i]
		at := size/4 + rand.IntN(size/2)
		token := aip.EncodePageToken(fmt.Sprintf("f%09d", at), aip.QueryHash("families", parent, "state = ACTIVE"))
		resp, err := fams[i].ListFamilies(ctx, &familiesv1.ListFamiliesRequest{Parent: parent, PageSize: 50, PageToken: token, Filter: "state = ACTIVE"})
		if err == nil && len(resp.GetFamilies()) != 50 {
			return fmt.Errorf("deep page had %d families", len(resp.GetFamilies()))
		}
		return err
	}); err != nil {
		return nil, err
	}
	// A town, postal code and language drawn anew for each sample, for the
	// same reason.
	languages := []string{"en", "es"}
	if r.Match, r.MatchQuery, err = both(matchSamples, matchStatement, func(ctx context.Context, i int, parent string) error {
		resp, err := refs[i].MatchPrograms(ctx, &referralsv1.MatchProgramsRequest{Parent: parent, Urgency: referralsv1.Urgency_URGENCY_IMMEDIATE,
			Coverage: referralsv1.CoverageKind_COVERAGE_KIND_MEDICAID, Locality: fmt.Sprintf("Town%d", rand.IntN(100)),
			PostalCode: fmt.Sprintf("%05d", rand.IntN(1000)), Language: languages[rand.IntN(len(languages))],
			Barriers: []referralsv1.BarrierKind{referralsv1.BarrierKind_BARRIER_KIND_FEAR_OF_WITHDRAWAL}})
		if err == nil && len(resp.GetMatches()) != 10 {
			return fmt.Errorf("match returned %d programs", len(resp.GetMatches()))
		}
		return err
	}); err != nil {
		return nil, err
	}
	ratio := func(p [2]result) float64 { return float64(p[1].P50) / float64(p[0].P50) }
	r.ListFirstRatio, r.ListDeepRatio, r.MatchRatio = ratio(r.ListFirst), ratio(r.ListDeep), ratio(r.Match)
	r.ListFirstQueryRatio, r.ListDeepQueryRatio, r.MatchQueryRatio = ratio(r.ListFirstQuery), ratio(r.ListDeepQuery), ratio(r.MatchQuery)
	return r, nil
}

// The statements the clock times: the families service's select of a
// page of families, and the referrals service's match.
const (
	listStatement  = "SELECT f.id, f.doc,"
	matchStatement = "WITH profiles AS ("
)
