package grpcserver

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// A call the client gave up on before its request came in whole is no
// refusal: only what the server itself refused is logged.
func TestEarlyRefusalsLeaveOutWhatTheClientGaveUp(t *testing.T) {
	var logs bytes.Buffer
	h := earlyRefusals{log: slog.New(slog.NewJSONHandler(&logs, nil))}
	for _, c := range []struct {
		code   codes.Code
		logged bool
	}{
		{codes.Canceled, false}, {codes.DeadlineExceeded, false}, {codes.Unavailable, false},
		{codes.ResourceExhausted, true}, {codes.Internal, true}, {codes.PermissionDenied, true},
	} {
		logs.Reset()
		ctx := h.TagRPC(context.Background(), &stats.RPCTagInfo{FullMethodName: "/handoff.test.Early/Call"})
		h.HandleRPC(ctx, &stats.End{Error: status.Error(c.code, "x")})
		if got := strings.Contains(logs.String(), "refused before authentication"); got != c.logged {
			t.Errorf("%v: logged %v, want %v: %s", c.code, got, c.logged, logs.String())
		}
		// Once the interceptor has seen the call, it is never logged here.
		logs.Reset()
		ctx = h.TagRPC(context.Background(), &stats.RPCTagInfo{FullMethodName: "/handoff.test.Early/Call"})
		reached(ctx)
		h.HandleRPC(ctx, &stats.End{Error: status.Error(c.code, "x")})
		if logs.Len() != 0 {
			t.Errorf("%v, reached: logged %s", c.code, logs.String())
		}
	}
}
