package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
)

// referralLister is the one call the inbox makes; tests pass a fake.
type referralLister interface {
	ListReferrals(ctx context.Context, in *referralsv1.ListReferralsRequest, opts ...grpc.CallOption) (*referralsv1.ListReferralsResponse, error)
}

// ehrInbox stands in for the EHR's queue of new referrals: one sweep of the
// clinic's requested referrals per interval, handed to the flows waiting on
// them. An integration polls this way; each of 100 flows asking on its own
// every 50 ms was about a fifth of the run's CPU (each list also asks the
// families service for consent), load no EHR would send.
type ehrInbox struct {
	mu      sync.Mutex
	waiting map[string]chan string // intervention -> its referral's name
	err     error                  // set once a sweep failed; ends the inbox
}

func newEHRInbox() *ehrInbox { return &ehrInbox{waiting: map[string]chan string{}} }

// expect registers a flow's intervention before its referral can exist.
// The channel gets the referral's name, or is closed if the inbox stopped.
func (b *ehrInbox) expect(intervention string) <-chan string {
	b.mu.Lock()
	defer b.mu.Unlock()
	ch := make(chan string, 1)
	if b.err != nil {
		close(ch)
		return ch
	}
	b.waiting[intervention] = ch
	return ch
}

// failure is why the inbox stopped, if it did.
func (b *ehrInbox) failure() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// sweepTries is how many sweeps in a row may fail before the inbox stops:
// a passing error must not fail every flow waiting on it.
const sweepTries = 5

// run sweeps every interval until ctx ends or sweepTries sweeps in a row
// fail.
func (b *ehrInbox) run(ctx context.Context, ref referralLister, parent string, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	failed := 0
	for {
		select {
		case <-ctx.Done():
			b.stop(ctx.Err())
			return
		case <-t.C:
		}
		err := b.sweep(ctx, ref, parent)
		if err == nil {
			failed = 0
			continue
		}
		if failed++; failed >= sweepTries {
			b.stop(fmt.Errorf("%d sweeps in a row failed, the last: %w", failed, err))
			return
		}
	}
}

// sweep reads every requested referral of the clinic, page by page, and
// hands each one a flow waits for to that flow, once.
func (b *ehrInbox) sweep(ctx context.Context, ref referralLister, parent string) error {
	b.mu.Lock()
	idle := len(b.waiting) == 0
	b.mu.Unlock()
	if idle {
		return nil
	}
	token := ""
	for {
		resp, err := ref.ListReferrals(ctx, &referralsv1.ListReferralsRequest{Parent: parent,
			Filter: "state = REQUESTED", PageSize: 1000, PageToken: token})
		if err != nil {
			return fmt.Errorf("EHR inbox: list requested referrals: %w", err)
		}
		b.mu.Lock()
		for _, r := range resp.GetReferrals() {
			if ch, ok := b.waiting[r.GetIntervention()]; ok {
				ch <- r.GetName()
				delete(b.waiting, r.GetIntervention())
			}
		}
		b.mu.Unlock()
		if token = resp.GetNextPageToken(); token == "" {
			return nil
		}
	}
}

func (b *ehrInbox) stop(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		b.err = err
	}
	for k, ch := range b.waiting {
		close(ch)
		delete(b.waiting, k)
	}
}
