package stack_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/devtemporal"
	"github.com/handoff-health/handoff/services/grpcclient"
	"github.com/handoff-health/handoff/services/loopback"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
	"github.com/handoff-health/handoff/services/servicetest"
	"github.com/handoff-health/handoff/services/stack"
	"github.com/handoff-health/handoff/services/stack/stacktest"
	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/codec"
	"github.com/handoff-health/handoff/workflows/ids"
)

// Canary strings put in names and notes appear neither in Temporal's
// database file nor in the logs, after a whole refusal story ran through
// the real embedded Temporal server.
func TestCanariesStayOutOfTemporalAndLogs(t *testing.T) {
	current = t
	dir := t.TempDir()
	port, err := loopback.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ts, err := devtemporal.Start(devtemporal.Config{DataDir: dir, Port: port})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			_ = ts.Stop()
		}
	}
	defer stop()
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	pc, err := codec.New("k", map[string][]byte{"k": k})
	if err != nil {
		t.Fatal(err)
	}
	logs := &servicetest.LogBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	tc, err := client.Dial(client.Options{HostPort: ts.HostPort, DataConverter: pc.DataConverter(), FailureConverter: pc.FailureConverter(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	iss, _ := auth.NewIssuer("https://issuer.test", "handoff")
	workerToken := iss.MustMint(auth.TokenOptions{Subject: "worker", Clinic: auth.AnyClinic, Roles: []auth.Role{auth.RoleWorker}})
	st, err := stack.Start(context.Background(), stack.Config{
		Log: log, DatabaseURL: pgtest.URL(), SchemaPrefix: pgtest.Prefix(t, "families", "interventions", "referrals"),
		Verifier: iss.Verifier(), WorkerToken: func(context.Context) (string, error) { return workerToken, nil },
		Temporal: tc, FamiliesAddr: "127.0.0.1:0", InterventionsAddr: "127.0.0.1:0", ReferralsAddr: "127.0.0.1:0",
		Settings: func(string) activities.Settings { return stacktest.Fast() }, RelayInterval: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Stop()
	conn := func(addr string) *grpc.ClientConn {
		c, err := grpcclient.Dial(addr, grpcclient.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	fam := familiesv1.NewFamiliesServiceClient(conn(st.FamiliesAddr))
	iv := interventionsv1.NewInterventionsServiceClient(conn(st.InterventionsAddr))
	ctx := auth.WithToken(context.Background(), iss.MustMint(auth.TokenOptions{Subject: "counselor-1", Clinic: "north", Roles: []auth.Role{auth.RoleCounselor}}))

	canaries := []string{"CANARYLOVEDONE", "CANARYMOTHER", "CANARYBARRIERNOTE", "CANARYSIGNNOTE", "CANARYWORDING", "CANARYOUTCOME", "+15550009999"}
	f := ok(fam.CreateFamily(ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: &familiesv1.Family{
		LovedOne: &familiesv1.LovedOne{GivenName: canaries[0], PrimarySubstance: familiesv1.Substance_SUBSTANCE_FENTANYL},
		Members: []*familiesv1.Member{{Id: "mom", GivenName: canaries[1], Relationship: familiesv1.Relationship_RELATIONSHIP_PARENT,
			Role: familiesv1.MemberRole_MEMBER_ROLE_CONTACT_PERSON, ConsentToContact: true,
			ContactChannels: []*familiesv1.ContactChannel{{Kind: familiesv1.ChannelKind_CHANNEL_KIND_SMS, Value: canaries[6]}}}},
		Counselor: "counselor-1"}}))
	ok(fam.CreateBarrier(ctx, &familiesv1.CreateBarrierRequest{Parent: f.GetName(), Barrier: &familiesv1.Barrier{Kind: familiesv1.BarrierKind_BARRIER_KIND_STIGMA, Notes: canaries[2]}}))
	ok(fam.CreateWarningSign(ctx, &familiesv1.CreateWarningSignRequest{Parent: f.GetName(), WarningSign: &familiesv1.WarningSign{Kind: familiesv1.WarningSignKind_WARNING_SIGN_KIND_JOB_LOSS, Notes: canaries[3]}}))
	ok(fam.CreateSafetyScreen(ctx, &familiesv1.CreateSafetyScreenRequest{Parent: f.GetName(), SafetyScreen: &familiesv1.SafetyScreen{Result: familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK}}))
	b := ok(fam.CreateBoundary(ctx, &familiesv1.CreateBoundaryRequest{Parent: f.GetName(), Boundary: &familiesv1.Boundary{Category: familiesv1.BoundaryCategory_BOUNDARY_CATEGORY_OTHER, Wording: canaries[4]}}))
	ok(fam.AgreeBoundary(ctx, &familiesv1.TransitionBoundaryRequest{Name: b.GetName()}))
	ok(fam.ActivateBoundary(ctx, &familiesv1.TransitionBoundaryRequest{Name: b.GetName()}))
	start := time.Now().Add(4 * time.Second)
	meeting := ok(iv.CreateIntervention(ctx, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north", Intervention: &interventionsv1.Intervention{
		Family: f.GetName(), Counselor: "counselor-1", StartTime: timestamppb.New(start), ExpectedDuration: durationpb.New(15 * time.Minute),
		Place:        &interventionsv1.Place{Kind: &interventionsv1.Place_InPerson{InPerson: &interventionsv1.InPersonPlace{Address: "1 Main St"}}},
		Participants: []*interventionsv1.Participant{{MemberId: "mom", Role: interventionsv1.ParticipantRole_PARTICIPANT_ROLE_SUPPORT}}}}))
	ok(iv.ScheduleIntervention(ctx, &interventionsv1.ScheduleInterventionRequest{Name: meeting.GetName()}))
	stacktest.Eventually(t, 20*time.Second, "the meeting to start", func() bool { return time.Now().After(start) })
	stacktest.Eventually(t, 20*time.Second, "the workflow", func() bool {
		_, err := tc.DescribeWorkflowExecution(context.Background(), ids.Intervention(meeting.GetName()), "")
		return err == nil
	})
	ok(iv.RecordOutcome(ctx, &interventionsv1.RecordOutcomeRequest{Name: meeting.GetName(), Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_DECLINED, Notes: canaries[5]}))
	wctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := tc.GetWorkflow(wctx, ids.Intervention(meeting.GetName()), "").Get(wctx, nil); err != nil {
		t.Fatalf("workflow: %v", err)
	}
	st.Stop()
	stop() // flush SQLite

	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(files) == 0 {
		t.Fatal("no Temporal database files")
	}
	var sawWorkflow bool
	for _, path := range files {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		sawWorkflow = sawWorkflow || bytes.Contains(data, []byte("intervention/clinics/north/interventions/"))
		for _, c := range canaries {
			if bytes.Contains(data, []byte(c)) {
				t.Errorf("%q found in Temporal's database file %s", c, filepath.Base(path))
			}
		}
	}
	if !sawWorkflow {
		t.Fatal("the database files hold no workflow at all: the test looked in the wrong place")
	}
	out := logs.String()
	if !strings.Contains(out, "ScheduleIntervention") {
		t.Fatalf("the logs are empty or elsewhere: %.200s", out)
	}
	for _, c := range canaries {
		if strings.Contains(out, c) {
			t.Errorf("%q found in the logs", c)
		}
	}
	fmt.Fprintf(os.Stderr, "canary test: %d Temporal files, %d bytes of logs checked\n", len(files), len(out))
}
