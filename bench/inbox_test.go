package main

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
)

// pagedReferrals answers ListReferrals from pages, one per token, and counts
// the calls.
type pagedReferrals struct {
	pages [][]*referralsv1.Referral
	calls int
	err   error
}

func (p *pagedReferrals) ListReferrals(_ context.Context, in *referralsv1.ListReferralsRequest, _ ...grpc.CallOption) (*referralsv1.ListReferralsResponse, error) {
	p.calls++
	if p.err != nil {
		return nil, p.err
	}
	if in.GetFilter() != "state = REQUESTED" {
		return nil, errors.New("unexpected filter " + in.GetFilter())
	}
	i := 0
	if in.GetPageToken() != "" {
		i = int(in.GetPageToken()[0] - '0')
	}
	resp := &referralsv1.ListReferralsResponse{Referrals: p.pages[i]}
	if i+1 < len(p.pages) {
		resp.NextPageToken = string(rune('0' + i + 1))
	}
	return resp, nil
}

func referral(name, intervention string) *referralsv1.Referral {
	return &referralsv1.Referral{Name: name, Intervention: intervention}
}

func TestEHRInboxHandsEachReferralToItsFlowOnce(t *testing.T) {
	ctx := context.Background()
	lister := &pagedReferrals{pages: [][]*referralsv1.Referral{
		{referral("r-other", "iv-nobody-waits"), referral("r-a", "iv-a")},
		{referral("r-b", "iv-b")},
	}}
	b := newEHRInbox()
	if err := b.sweep(ctx, lister, "clinics/c"); err != nil || lister.calls != 0 {
		t.Fatalf("with no flow waiting: %d calls, err %v; want none", lister.calls, err)
	}
	a, bb := b.expect("iv-a"), b.expect("iv-b")
	if err := b.sweep(ctx, lister, "clinics/c"); err != nil {
		t.Fatal(err)
	}
	if lister.calls != 2 {
		t.Errorf("%d list calls, want 2 (both pages)", lister.calls)
	}
	if got := <-a; got != "r-a" {
		t.Errorf("flow a got %q, want r-a", got)
	}
	if got := <-bb; got != "r-b" {
		t.Errorf("flow b got %q, want r-b (second page)", got)
	}
	// Still requested on the next sweep (the EHR has not accepted it yet):
	// nobody waits for it any more, so nothing is sent twice.
	c := b.expect("iv-c")
	if err := b.sweep(ctx, lister, "clinics/c"); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-a:
		t.Errorf("flow a got a second referral %q", got)
	case got := <-c:
		t.Errorf("flow c got %q, which is not its referral", got)
	default:
	}
}

func TestEHRInboxFailureReleasesTheWaitingFlows(t *testing.T) {
	boom := errors.New("unavailable")
	b := newEHRInbox()
	waiting := b.expect("iv-a")
	done := make(chan struct{})
	go func() {
		b.run(context.Background(), &pagedReferrals{err: boom}, "clinics/c", time.Millisecond)
		close(done)
	}()
	select {
	case _, ok := <-waiting:
		if ok {
			t.Fatal("a waiting flow got a referral from a failed sweep")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a waiting flow was not released when the inbox failed")
	}
	<-done
	if err := b.failure(); !errors.Is(err, boom) {
		t.Errorf("failure() = %v, want it to wrap %v", err, boom)
	}
	if _, ok := <-b.expect("iv-late"); ok {
		t.Error("expect after the inbox stopped gave an open channel")
	}
}

// flaky fails its first call, then answers from its pages.
type flaky struct {
	pagedReferrals
	failed bool
}

func (f *flaky) ListReferrals(ctx context.Context, in *referralsv1.ListReferralsRequest, opts ...grpc.CallOption) (*referralsv1.ListReferralsResponse, error) {
	if !f.failed {
		f.failed = true
		return nil, errors.New("passing error")
	}
	return f.pagedReferrals.ListReferrals(ctx, in, opts...)
}

func TestEHRInboxRidesOutAPassingError(t *testing.T) {
	b := newEHRInbox()
	waiting := b.expect("iv-a")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go b.run(ctx, &flaky{pagedReferrals: pagedReferrals{pages: [][]*referralsv1.Referral{{referral("r-a", "iv-a")}}}}, "clinics/c", time.Millisecond)
	select {
	case got, ok := <-waiting:
		if !ok || got != "r-a" {
			t.Fatalf("got %q (open %v), want r-a after one failed sweep; inbox failure: %v", got, ok, b.failure())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no referral after a passing error")
	}
}
