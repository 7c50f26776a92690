package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"go.temporal.io/sdk/log"
)

// The SDK's loggers for workers, workflows and activities are derived with
// With: they keep the warn floor of the one they come from.
func TestTemporalLoggerFloorSurvivesWith(t *testing.T) {
	var buf bytes.Buffer
	root := newTemporalLogger(slog.New(slog.NewJSONHandler(&buf, nil)))
	derived := log.With(root, "Namespace", "default", "TaskQueue", "handoff")
	derived.Info("poller started")
	root.Info("client created")
	if buf.Len() != 0 {
		t.Fatalf("info lines got through: %s", buf.String())
	}
	derived.Warn("task failed")
	if !strings.Contains(buf.String(), `"msg":"task failed"`) || !strings.Contains(buf.String(), `"TaskQueue":"handoff"`) {
		t.Fatalf("a derived warning: %s", buf.String())
	}
}
