package families

import (
	"context"

	auditv1 "github.com/handoff-health/handoff/gen/go/handoff/audit/v1"
	"github.com/handoff-health/handoff/services/audit"
)

// ListAuditEvents implements the API: the audit trail this service keeps.
func (s *Server) ListAuditEvents(ctx context.Context, req *auditv1.ListAuditEventsRequest) (*auditv1.ListAuditEventsResponse, error) {
	return audit.List(ctx, s.pool, "families", req)
}

// Auditor records this service's calls in its own audit trail.
func (s *Server) Auditor() *audit.Recorder { return &audit.Recorder{DB: s.pool} }
