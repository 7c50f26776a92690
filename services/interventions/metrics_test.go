package interventions_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	"github.com/handoff-health/handoff/services/auth"
)

// sums reads every int64 counter the reader holds, all attributes summed.
func sums(t *testing.T, r *sdkmetric.ManualReader) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if s, ok := m.Data.(metricdata.Sum[int64]); ok {
				for _, p := range s.DataPoints {
					out[m.Name] += p.Value
				}
			}
		}
	}
	return out
}

// metricsReader reads the process's counters. They are made when the
// package loads, from the global provider, which hands them on to the
// first provider set only: set once, for every run of the test (-count).
var metricsReader = sync.OnceValue(func() *sdkmetric.ManualReader {
	r := sdkmetric.NewManualReader()
	otel.SetMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(r)))
	return r
})

// Not parallel: the counters are the process's, and no other test of the
// package runs beside this one.
func TestReminderCountsOnlyWhatCommits(t *testing.T) {
	reader := metricsReader()
	f := setup(t)
	ctx := context.Background()
	// A commit that fails after every statement succeeded: a deferred
	// check, as a serialization failure or a lost connection at COMMIT.
	if _, err := f.pool.Exec(ctx, `
		CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.message LIKE '%refused at commit%' OR NEW.failure_reason LIKE '%refused at commit%' THEN
				RAISE EXCEPTION 'refused at commit';
			END IF;
			RETURN NULL;
		END $$;
		CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT OR UPDATE ON reminders
			DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit()`); err != nil {
		t.Fatal(err)
	}
	auto := f.env.As("north", "sms-gateway", auth.RoleReminders)
	due := timestamppb.Now()
	create := func(message, requestID string) (*interventionsv1.Reminder, error) {
		return f.client.CreateReminder(f.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", RequestId: requestID,
			Reminder: &interventionsv1.Reminder{
				Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: "c1",
					Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP}, DueTime: due,
				Kind: interventionsv1.ReminderKind_REMINDER_KIND_OVERDOSE_ALERT, Message: message, RelatedResource: f.family.GetName()}})
	}
	before := sums(t, reader)
	if _, err := create("Please call the family today (refused at commit).", ""); err == nil {
		t.Fatal("a create whose commit failed succeeded")
	}
	if got := sums(t, reader)["handoff.reminders.created"] - before["handoff.reminders.created"]; got != 0 {
		t.Fatalf("a create whose commit failed counted %d reminders created; want 0", got)
	}
	rem, err := create("Please call the family today.", "3f1c2d9e-5b7a-4c1d-9e8f-0a1b2c3d4e5f")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := create("Please call the family today.", "3f1c2d9e-5b7a-4c1d-9e8f-0a1b2c3d4e5f"); err != nil {
		t.Fatal(err)
	}
	if got := sums(t, reader)["handoff.reminders.created"] - before["handoff.reminders.created"]; got != 1 {
		t.Fatalf("one reminder made, its request retried once: counted %d; want 1", got)
	}

	if _, err := f.client.ClaimReminder(auto, &interventionsv1.ClaimReminderRequest{Name: rem.GetName(), Claimant: "app-1",
		LeaseDuration: durationpb.New(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	complete := func(reason string) error {
		_, err := f.client.CompleteReminder(auto, &interventionsv1.CompleteReminderRequest{Name: rem.GetName(), Claimant: "app-1",
			Result: interventionsv1.DeliveryResult_DELIVERY_RESULT_FAILED, Reason: reason})
		return err
	}
	if err := complete("the app refused it (refused at commit)"); err == nil {
		t.Fatal("a completion whose commit failed succeeded")
	}
	if got := sums(t, reader)["handoff.reminders.failed"] - before["handoff.reminders.failed"]; got != 0 {
		t.Fatalf("a completion whose commit failed counted %d reminders failed; want 0", got)
	}
	if err := complete("the app refused it"); err != nil {
		t.Fatal(err)
	}
	after := sums(t, reader)
	if got := after["handoff.reminders.failed"] - before["handoff.reminders.failed"]; got != 1 {
		t.Fatalf("one reminder failed: counted %d; want 1", got)
	}
	if got := after["handoff.reminders.delivered"] - before["handoff.reminders.delivered"]; got != 0 {
		t.Fatalf("no reminder delivered: counted %d", got)
	}
}
