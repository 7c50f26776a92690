package main

import (
	"context"
	"log/slog"

	"go.temporal.io/sdk/log"

	"github.com/handoff-health/handoff/services/telemetry"
)

// newTemporalLogger sends the Temporal SDK's logs through slog, at warn
// level and above: its info lines are about the SDK, not about families.
// Errors are written by their kinds alone (telemetry.RedactError): a
// failed activity's carries a service's words about a family.
func newTemporalLogger(l *slog.Logger) log.Logger {
	return log.NewStructuredLogger(slog.New(levelFloor{Handler: telemetry.RedactErrors(l.Handler()), min: slog.LevelWarn}))
}

type levelFloor struct {
	slog.Handler
	min slog.Level
}

func (h levelFloor) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

// WithAttrs and WithGroup keep the floor: the SDK derives a logger for each
// worker, workflow and activity, and those must not let info lines through.
func (h levelFloor) WithAttrs(attrs []slog.Attr) slog.Handler {
	return levelFloor{Handler: h.Handler.WithAttrs(attrs), min: h.min}
}

func (h levelFloor) WithGroup(name string) slog.Handler {
	return levelFloor{Handler: h.Handler.WithGroup(name), min: h.min}
}
