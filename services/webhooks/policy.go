package webhooks

import (
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/grpcserver"
)

// Policy says which roles may call each method (least privilege). The EHR
// and the reminder automation manage their own subscriptions (the handlers
// hide everyone else's); clinic administrators see every subscription of
// their clinic, its deliveries and dead letters, and replay them.
func Policy() grpcserver.Policy {
	subscribers := []auth.Role{auth.RoleEHR, auth.RoleReminders, auth.RoleClinicAdmin}
	admins := []auth.Role{auth.RoleClinicAdmin}
	p := grpcserver.Policy{}
	for _, m := range []string{"CreateSubscription", "GetSubscription", "ListSubscriptions", "RotateSubscriptionSecret", "DeleteSubscription"} {
		p[svc+m] = subscribers
	}
	for _, m := range []string{"ListDeliveries", "ReplayDelivery", "ListAuditEvents"} {
		p[svc+m] = admins
	}
	return p
}
