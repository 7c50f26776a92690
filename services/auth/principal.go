// Package auth establishes who is calling: it verifies bearer tokens (OIDC
// JWTs, ES256) against the issuer's keys, puts the caller's Principal in the
// request context, and answers whether a principal may act in a clinic.
package auth

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/handoff-health/handoff/services/apperr"
)

// Role is what a principal may do. Roles come from the token's "roles" claim.
type Role string

// The roles Handoff knows.
const (
	RoleCounselor   Role = "counselor"
	RoleClinicAdmin Role = "clinic_admin"
	RoleEHR         Role = "ehr"
	RoleReminders   Role = "reminder_automation"
	// RoleWorker is the Temporal worker's service identity. It acts for
	// every clinic, always on resources the workflows were started for.
	RoleWorker Role = "worker"
	// RoleCalendarFeed is a calendar app reading one counselor's feed. The
	// interventions service grants it to a request that presents the feed's
	// secret token; it may only export that feed.
	RoleCalendarFeed Role = "calendar_feed"
	// RoleCalendarReader is the interventions service's identity for
	// calendar feeds. It acts for every clinic and may only list families
	// and referrals, to put a counselor's clients' intake appointments in
	// the counselor's feed.
	RoleCalendarReader Role = "calendar_reader"
	// RoleWebhookSender is the webhook sender's service identity. It may
	// only check consent and record disclosures, for every clinic.
	RoleWebhookSender Role = "webhook_sender"
)

// AnyClinic is the clinic claim of service identities that serve every clinic.
const AnyClinic = "*"

// Principal is the authenticated caller.
type Principal struct {
	Subject string
	Clinic  string
	Roles   []Role
}

// Has reports whether p holds any of roles.
func (p Principal) Has(roles ...Role) bool {
	for _, r := range roles {
		if slices.Contains(p.Roles, r) {
			return true
		}
	}
	return false
}

// WorkerOnly reports whether p is the Temporal worker acting as itself: a
// token that also holds a staff role is a person's.
func (p Principal) WorkerOnly() bool {
	return p.Has(RoleWorker) && !p.Has(RoleCounselor, RoleClinicAdmin)
}

// everyClinic are the service identities that may act for every clinic,
// each as narrow as its job.
var everyClinic = []Role{RoleWorker, RoleWebhookSender, RoleCalendarReader}

// internal are the roles only Handoff's own parts hold: its service
// identities, and the grant a calendar feed's token earns inside the
// interventions service. No person or outside system holds one.
var internal = append([]Role{RoleCalendarFeed}, everyClinic...)

// Internal reports whether p holds a role only Handoff's own parts hold.
// The public edge refuses such a token whatever clinic it names: a token
// of the worker's role for one clinic (an identity provider letting an
// administrator hand out any role) would create reminders the automation
// sends to families, and read families as the worker does.
func (p Principal) Internal() bool {
	return p.Has(internal...)
}

// ServesEveryClinic reports whether p is a service identity that acts for
// every clinic: its clinic claim is AnyClinic and it holds one of those
// roles, and no other. A staff role beside it (an identity provider's
// mistake) must not make an administrator of every clinic, nor a second
// service role join two identities' rights: each is narrowed for its job
// alone (the calendar reader's view of a family, the worker's lists of
// one family's records), and their union would undo that.
func (p Principal) ServesEveryClinic() bool {
	if p.Clinic != AnyClinic || len(p.Roles) == 0 || !slices.Contains(everyClinic, p.Roles[0]) {
		return false
	}
	for _, r := range p.Roles[1:] {
		if r != p.Roles[0] {
			return false
		}
	}
	return true
}

// InClinic reports whether p may act inside clinic.
func (p Principal) InClinic(clinic string) bool {
	return clinic != "" && (p.Clinic == clinic || p.ServesEveryClinic())
}

type ctxKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, ctxKey{}, p)
}

// FromContext returns the principal in ctx, if any.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(ctxKey{}).(Principal)
	return p, ok
}

// skipClinicCheck turns CheckClinic off; only tests set it, to show that
// row-level security alone keeps clinics apart.
var skipClinicCheck atomic.Bool

// DisableClinicCheckForTesting turns the service-layer clinic check off
// until the returned function is called. For tests only: it proves that
// the database's row-level security isolates clinics on its own.
func DisableClinicCheckForTesting() (restore func()) {
	skipClinicCheck.Store(true)
	return func() { skipClinicCheck.Store(false) }
}

// CheckClinic returns nil if the caller may act in clinic, and otherwise
// NOT_FOUND for name, so that another clinic's resources cannot even be
// confirmed to exist.
func CheckClinic(ctx context.Context, clinic, name string) error {
	if skipClinicCheck.Load() {
		return nil
	}
	p, ok := FromContext(ctx)
	if !ok || !p.InClinic(clinic) {
		return apperr.NotFound(name)
	}
	return nil
}

// WorkerOnly reports whether ctx's caller is the workflows' worker acting
// as itself (Principal.WorkerOnly).
func WorkerOnly(ctx context.Context) bool {
	p, ok := FromContext(ctx)
	return ok && p.WorkerOnly()
}

// RequirePinned refuses the worker a list of what across a clinic unless
// pinned reports the filter compares one of fields with = (aip.Pinned):
// its token is good for every clinic, and the workflows list only one
// family's, meeting's or workflow's records. A leaked token must not page
// out every clinic's. Nil for any other caller.
func RequirePinned(ctx context.Context, pinned func(fields ...string) bool, what string, fields ...string) error {
	if !WorkerOnly(ctx) || pinned(fields...) {
		return nil
	}
	return apperr.PermissionDenied(fmt.Sprintf("the worker lists %s only with = on one of %s in the filter", what, strings.Join(fields, ", ")))
}

// Actor returns the subject to record as the author of a change.
func Actor(ctx context.Context) string {
	if p, ok := FromContext(ctx); ok {
		return p.Subject
	}
	return "unknown"
}
