package main

import (
	"context"
	"log/slog"

	"go.temporal.io/sdk/log"
)

// newTemporalLogger sends the Temporal SDK's logs through slog, at warn
// level and above: its info lines are about the SDK, not about families.
func newTemporalLogger(l *slog.Logger) log.Logger {
	return log.NewStructuredLogger(slog.New(levelFloor{Handler: l.Handler(), min: slog.LevelWarn}))
}

type levelFloor struct {
	slog.Handler
	min slog.Level
}

func (h levelFloor) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}
