package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/server/temporaltest"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/grpcclient"
	"github.com/handoff-health/handoff/services/loopback"
	"github.com/handoff-health/handoff/workflows/codec"
)

// procMem is the resident memory of one handoff process.
type procMem struct {
	Name                     string
	Idle, Peak               int64 // resident, bytes
	IdlePrivate, PeakPrivate int64 // resident and not backed by a file (RssAnon)
}

// processBench runs the system as production does, one handoff process per
// part (the Temporal server stays in this process, as a stand-in for the
// cluster), and reads each process's resident memory when idle and its
// peak while the gateway serves API load and interventions run to intake.
func processBench(ctx context.Context, env *benchEnv, cfg config) ([]procMem, map[string]result, error) {
	dir, err := os.MkdirTemp("", "handoff-bench-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "handoff")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/handoff-health/handoff/services/cmd/handoff").CombinedOutput(); err != nil {
		return nil, nil, fmt.Errorf("build handoff: %w\n%s", err, out)
	}
	key := make([]byte, 32)
	pc, err := codec.New("k", map[string][]byte{"k": key})
	if err != nil {
		return nil, nil, err
	}
	ts := temporaltest.NewServer(temporaltest.WithBaseClientOptions(client.Options{DataConverter: pc.DataConverter(), FailureConverter: pc.FailureConverter()}))
	defer ts.Stop()
	jwks := httptest.NewServer(env.issuer.JWKSHandler())
	defer jwks.Close()
	files := map[string]string{
		"worker.token": env.issuer.MustMint(auth.TokenOptions{Subject: "worker", Clinic: auth.AnyClinic, Roles: []auth.Role{auth.RoleWorker}, TTL: time.Hour}),
		"sender.token": env.issuer.MustMint(auth.TokenOptions{Subject: "sender", Clinic: auth.AnyClinic, Roles: []auth.Role{auth.RoleWebhookSender}, TTL: time.Hour}),
		"settings.json": `{"default": {"holdLead": "1s", "reminderOffsets": ["1s"], "outcomeGrace": "1h", "outcomeEscalation": "1h",
			"intakeReminderOffsets": ["1s"]}}`,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			return nil, nil, err
		}
	}
	addr := map[string]string{}
	for _, name := range []string{"families", "interventions", "referrals", "webhooks", "gateway"} {
		if addr[name], err = loopback.FreeAddr(); err != nil {
			return nil, nil, err
		}
	}
	prefix := env.prefix + "p_"
	for _, s := range []string{"families", "interventions", "referrals", "webhooks"} {
		env.schemas = append(env.schemas, prefix+s)
	}
	b64 := base64.StdEncoding.EncodeToString(key)
	procEnv := append(os.Environ(), "HANDOFF_DATABASE_URL="+env.dsn, "HANDOFF_SCHEMA_PREFIX="+prefix,
		"HANDOFF_OIDC_ISSUER="+env.issuer.URL, "HANDOFF_JWKS_URL="+jwks.URL,
		"HANDOFF_TEMPORAL_ADDRESS="+ts.GetFrontendHostPort(), "HANDOFF_TEMPORAL_NAMESPACE="+ts.GetDefaultNamespace(),
		"HANDOFF_PAYLOAD_KEYS=k:"+b64, "HANDOFF_PAYLOAD_KEY_ID=k", "HANDOFF_WEBHOOK_SECRET_KEY="+b64,
		"HANDOFF_WORKER_TOKEN_FILE="+filepath.Join(dir, "worker.token"), "HANDOFF_WEBHOOK_TOKEN_FILE="+filepath.Join(dir, "sender.token"),
		"HANDOFF_WORKFLOW_SETTINGS_FILE="+filepath.Join(dir, "settings.json"),
		"HANDOFF_FAMILIES_LISTEN="+addr["families"], "HANDOFF_INTERVENTIONS_LISTEN="+addr["interventions"],
		"HANDOFF_REFERRALS_LISTEN="+addr["referrals"], "HANDOFF_WEBHOOKS_LISTEN="+addr["webhooks"], "HANDOFF_GATEWAY_LISTEN="+addr["gateway"],
		"HANDOFF_FAMILIES_ADDRESS="+addr["families"], "HANDOFF_INTERVENTIONS_ADDRESS="+addr["interventions"],
		"HANDOFF_REFERRALS_ADDRESS="+addr["referrals"], "HANDOFF_WEBHOOKS_ADDRESS="+addr["webhooks"])
	logs, err := os.Create(filepath.Join(dir, "processes.log"))
	if err != nil {
		return nil, nil, err
	}
	defer logs.Close()
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			_ = p.Process.Signal(syscall.SIGTERM)
		}
		for _, p := range procs {
			_ = p.Wait()
		}
	}()
	conns := map[string]*grpc.ClientConn{}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// The services first (each migrates its schema), then what calls them.
	names := []string{"families", "referrals", "interventions", "webhooks", "worker", "gateway"}
	for _, name := range names {
		cmd := exec.CommandContext(ctx, bin, name)
		cmd.Env, cmd.Stdout, cmd.Stderr = procEnv, logs, logs
		if err := cmd.Start(); err != nil {
			return nil, nil, fmt.Errorf("start %s: %w", name, err)
		}
		procs = append(procs, cmd)
		if a, ok := addr[name]; ok && name != "gateway" {
			if conns[name], err = grpcclient.Dial(a, grpcclient.Config{}); err != nil {
				return nil, nil, err
			}
			if err := serving(ctx, conns[name]); err != nil {
				b, _ := os.ReadFile(logs.Name())
				return nil, nil, fmt.Errorf("%s did not come up: %w\n%s", name, err, tail(b, 3000))
			}
		}
	}
	gwURL := "http://" + addr["gateway"]
	if err := waitHTTP(ctx, gwURL+"/readyz"); err != nil {
		return nil, nil, fmt.Errorf("gateway did not come up: %w", err)
	}
	time.Sleep(2 * time.Second) // settled, relays and pollers idle
	out := make([]procMem, len(procs))
	for i, p := range procs {
		pid := strconv.Itoa(p.Process.Pid)
		out[i] = procMem{Name: names[i], Idle: readRSSOf(pid, "VmRSS:"), IdlePrivate: readRSSOf(pid, "RssAnon:")}
	}

	// Under load: peaks sampled every 100 ms while the gateway serves
	// creates and reads and interventions run to a completed intake, then
	// while the families service is driven directly.
	stop := make(chan struct{})
	var sampled sync.WaitGroup
	sampled.Add(1)
	go func() {
		defer sampled.Done()
		for t := time.NewTicker(100 * time.Millisecond); ; {
			for i, p := range procs {
				pid := strconv.Itoa(p.Process.Pid)
				out[i].Peak = max(out[i].Peak, readRSSOf(pid, "VmRSS:"))
				out[i].PeakPrivate = max(out[i].PeakPrivate, readRSSOf(pid, "RssAnon:"))
			}
			select {
			case <-stop:
				t.Stop()
				return
			case <-t.C:
			}
		}
	}()
	err = processLoad(ctx, env, cfg, ts, gwURL, conns)
	if err != nil {
		close(stop)
		sampled.Wait()
		b, _ := os.ReadFile(logs.Name())
		return nil, nil, fmt.Errorf("%w\n%s", err, tail(b, 3000))
	}
	// Sampled through it too: it drives the families service hardest.
	lat, err := deployedLatency(ctx, env, cfg, conns["families"])
	close(stop)
	sampled.Wait()
	if err != nil {
		return nil, nil, fmt.Errorf("latency as deployed: %w", err)
	}
	return out, lat, nil
}

// deployedLatency repeats the API section's gRPC runs against the families
// service in its own process, as deployed: saturation at the same
// concurrency, then open loop at half of it (the disk probe alongside only
// when asked for).
// The load generator stays on the same cores.
func deployedLatency(ctx context.Context, env *benchEnv, cfg config, conn *grpc.ClientConn) (map[string]result, error) {
	fam := familiesv1.NewFamiliesServiceClient(conn)
	gctx := auth.WithToken(ctx, env.issuer.MustMint(auth.TokenOptions{Subject: "bench", Clinic: "flows", Roles: []auth.Role{auth.RoleCounselor}, TTL: time.Hour}))
	f, err := familyToRead(gctx, fam, "clinics/flows")
	if err != nil {
		return nil, err
	}
	ops := map[string]func(ctx context.Context) error{
		"get": func(context.Context) error {
			_, err := fam.GetFamily(gctx, &familiesv1.GetFamilyRequest{Name: f.GetName()})
			return err
		},
		"create": func(context.Context) error {
			_, err := fam.CreateFamily(gctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/flows", Family: &familiesv1.Family{
				LovedOne: &familiesv1.LovedOne{GivenName: "Bench"}, Counselor: "c-1"}})
			return err
		},
	}
	out := map[string]result{}
	for _, op := range []string{"get", "create"} {
		fn := ops[op]
		sat := saturate(ctx, cfg.conc, cfg.duration, func(ctx context.Context, _, _ int) error { return fn(ctx) })
		if sat.Errors > 0 || sat.Ops == 0 {
			return nil, fmt.Errorf("%s: %d errors in %d operations", op, sat.Errors, sat.Ops)
		}
		half, err := openLoop(ctx, sat.Throughput/2, cfg.duration, fn)
		if err != nil {
			return nil, fmt.Errorf("%s at half saturation: %w", op, err)
		}
		out[op], out[op+" at half saturation"] = sat, half
	}
	return out, nil
}

// processLoad drives the processes: REST creates and reads through the
// gateway at the API section's concurrency, while a quarter of the
// workflow section's flows run to a completed intake.
func processLoad(ctx context.Context, env *benchEnv, cfg config, ts *temporaltest.TestServer, gwURL string, conns map[string]*grpc.ClientConn) error {
	fam := familiesv1.NewFamiliesServiceClient(conns["families"])
	iv := interventionsv1.NewInterventionsServiceClient(conns["interventions"])
	ref := referralsv1.NewReferralsServiceClient(conns["referrals"])
	counselor, ehr, drafts, err := prepareFlows(ctx, env, fam, iv, ref, max(1, cfg.flows/4))
	if err != nil {
		return err
	}
	token := env.issuer.MustMint(auth.TokenOptions{Subject: "bench", Clinic: "flows", Roles: []auth.Role{auth.RoleCounselor}, TTL: time.Hour})
	httpc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: cfg.conc * 2}}
	flows := make(chan error, 1)
	go func() {
		_, err := runFlows(ctx, ts.GetDefaultClient(), iv, ref, counselor, ehr, drafts, 2*time.Second)
		flows <- err
	}()
	r := closedLoop(ctx, cfg.conc, cfg.duration, func(ctx context.Context, _, i int) error {
		var req *http.Request
		if i%2 == 0 {
			req, _ = http.NewRequestWithContext(ctx, http.MethodPost, gwURL+"/v1/clinics/flows/families",
				bytes.NewReader([]byte(`{"lovedOne":{"givenName":"Bench"},"counselor":"c-1"}`)))
			req.Header.Set("Content-Type", "application/json")
		} else {
			req, _ = http.NewRequestWithContext(ctx, http.MethodGet, gwURL+"/v1/clinics/flows/families?pageSize=20", nil)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		return do(httpc, req)
	})
	if err := <-flows; err != nil {
		return err
	}
	if r.Errors > 0 || r.Ops == 0 {
		return fmt.Errorf("gateway load: %d errors in %d operations", r.Errors, r.Ops)
	}
	return nil
}

func serving(ctx context.Context, conn *grpc.ClientConn) error {
	var err error
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		var resp *healthpb.HealthCheckResponse
		resp, err = healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
	}
	return err
}

func waitHTTP(ctx context.Context, url string) error {
	var err error
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err = do(http.DefaultClient, req); err == nil {
			return nil
		}
	}
	return err
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
