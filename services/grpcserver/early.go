package grpcserver

import (
	"context"
	"log/slog"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// earlyRefusals logs the calls grpc-go refuses before the interceptor
// runs: a request over the size limit, bytes that do not decode, a stream
// (the streams interceptor refuses it unread). The interceptor logs every
// call it sees; these it never sees, and a caller sending them, token or
// not, must show in the log where failed sign-ins are watched. (A method
// no service has is answered Unimplemented by grpc-go with no call to
// report here.)
type earlyRefusals struct{ log *slog.Logger }

// callKey holds a call's *call in its context: one value, made once per
// call, as this runs on every request.
type callKey struct{}

// call is what End does not carry: the method, and whether the
// interceptor saw the call.
type call struct {
	method  string
	reached atomic.Bool
}

func (earlyRefusals) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, callKey{}, &call{method: info.FullMethodName})
}

func (h earlyRefusals) HandleRPC(ctx context.Context, s stats.RPCStats) {
	end, ok := s.(*stats.End)
	if !ok || end.Client || end.Error == nil {
		return
	}
	c, ok := ctx.Value(callKey{}).(*call)
	if !ok || c.reached.Load() {
		return // the interceptor logged it
	}
	switch status.Code(end.Error) {
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable:
		// The client gave up, or its connection went, before its request
		// had come in whole: nothing was refused.
		return
	}
	method := c.method
	if len(method) > 256 { // the caller's text: bounded
		method = method[:256]
	}
	h.log.WarnContext(ctx, "refused before authentication",
		append([]any{"method", method, "code", status.Code(end.Error).String()}, origin(ctx)...)...)
}

func (earlyRefusals) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (earlyRefusals) HandleConn(context.Context, stats.ConnStats) {}

// reached marks the call of ctx as seen by the interceptor.
func reached(ctx context.Context) {
	if c, ok := ctx.Value(callKey{}).(*call); ok {
		c.reached.Store(true)
	}
}
