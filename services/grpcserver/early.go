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

// reachedKey holds, in a call's context, whether the interceptor ran.
type reachedKey struct{}

// methodKey holds the call's method, which End does not carry.
type methodKey struct{}

func (earlyRefusals) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	ctx = context.WithValue(ctx, methodKey{}, info.FullMethodName)
	return context.WithValue(ctx, reachedKey{}, new(atomic.Bool))
}

func (h earlyRefusals) HandleRPC(ctx context.Context, s stats.RPCStats) {
	end, ok := s.(*stats.End)
	if !ok || end.Client || end.Error == nil {
		return
	}
	if r, ok := ctx.Value(reachedKey{}).(*atomic.Bool); !ok || r.Load() {
		return // the interceptor logged it
	}
	switch status.Code(end.Error) {
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable:
		// The client gave up, or its connection went, before its request
		// had come in whole: nothing was refused.
		return
	}
	method, _ := ctx.Value(methodKey{}).(string)
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
	if r, ok := ctx.Value(reachedKey{}).(*atomic.Bool); ok {
		r.Store(true)
	}
}
