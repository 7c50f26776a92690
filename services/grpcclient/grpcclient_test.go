package grpcclient_test

import (
	"bytes"
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/handoff-health/handoff/services/grpcclient"
)

// An answer past gRPC's 4 MiB default (a full page of large records) is
// taken, not refused as RESOURCE_EXHAUSTED.
func TestLargeAnswersAreTaken(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 6<<20)
	srv := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
		if err := stream.RecvMsg(&emptypb.Empty{}); err != nil {
			return err
		}
		return stream.SendMsg(wrapperspb.Bytes(big))
	}))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	conn, err := grpcclient.Dial(lis.Addr().String(), grpcclient.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var out wrapperspb.BytesValue
	if err := conn.Invoke(context.Background(), "/handoff.test.v1.Test/Big", &emptypb.Empty{}, &out); err != nil {
		t.Fatalf("a 6 MiB answer: %v", err)
	}
	if len(out.GetValue()) != len(big) {
		t.Fatalf("got %d bytes, want %d", len(out.GetValue()), len(big))
	}
}

// Calls take turns over every address the target resolves to, as a
// headless Service's name resolves to each replica: none sits idle.
func TestCallsSpreadOverReplicas(t *testing.T) {
	var hits [2]atomic.Int32
	var addrs []resolver.Address
	for i := range hits {
		srv := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
			hits[i].Add(1)
			if err := stream.RecvMsg(&emptypb.Empty{}); err != nil {
				return err
			}
			return stream.SendMsg(&emptypb.Empty{})
		}))
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = srv.Serve(lis) }()
		t.Cleanup(srv.Stop)
		addrs = append(addrs, resolver.Address{Addr: lis.Addr().String()})
	}
	r := manual.NewBuilderWithScheme("replicas")
	r.InitialState(resolver.State{Addresses: addrs})
	conn, err := grpcclient.Dial(r.Scheme()+":///families", grpcclient.Config{}, grpc.WithResolvers(r))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// round_robin sends calls only to connections already up, and the
	// second may come up a little after the first: calls go on until both
	// have had some, for at most a few seconds (one connection, as with
	// pick_first, never spreads).
	for deadline := time.Now().Add(5 * time.Second); hits[0].Load() == 0 || hits[1].Load() == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("calls per replica: %d and %d; want both used", hits[0].Load(), hits[1].Load())
		}
		if err := conn.Invoke(context.Background(), "/handoff.test.v1.Test/Ping", &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	// Once both are up, calls take turns (strictly, but for a connection
	// that blips).
	hits[0].Store(0)
	hits[1].Store(0)
	for range 20 {
		if err := conn.Invoke(context.Background(), "/handoff.test.v1.Test/Ping", &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
			t.Fatal(err)
		}
	}
	if a, b := hits[0].Load(), hits[1].Load(); a < 5 || b < 5 || a+b != 20 {
		t.Fatalf("calls per replica once both are up: %d and %d; want about 10 each", a, b)
	}
}

// A call whose server goes silent mid-call (a node lost, a network cut:
// no reset, no answer) fails UNAVAILABLE once a keepalive ping goes
// unanswered, not at its deadline: the next calls would otherwise queue
// behind the same dead connection.
func TestASilentServerIsFoundByKeepalive(t *testing.T) {
	// The shortest the client allows, for the test; the default is 30 s.
	defer func(k keepalive.ClientParameters) { grpcclient.Keepalive = k }(grpcclient.Keepalive)
	grpcclient.Keepalive = keepalive.ClientParameters{Time: 10 * time.Second, Timeout: time.Second}
	srv := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
		<-stream.Context().Done() // never answers
		return nil
	}))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	// A proxy that, once silenced, drops what passes instead of closing.
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	var silent atomic.Bool
	go func() {
		for {
			c, err := front.Accept()
			if err != nil {
				return
			}
			back, err := net.Dial("tcp", lis.Addr().String())
			if err != nil {
				c.Close()
				return
			}
			pipe := func(dst, src net.Conn) {
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					if err != nil {
						return
					}
					if !silent.Load() {
						if _, err := dst.Write(buf[:n]); err != nil {
							return
						}
					}
				}
			}
			go pipe(back, c)
			go pipe(c, back)
		}
	}()
	conn, err := grpcclient.Dial(front.Addr().String(), grpcclient.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	go func() {
		time.Sleep(500 * time.Millisecond) // the call is on its way
		silent.Store(true)
	}()
	start := time.Now()
	err = conn.Invoke(ctx, "/test.Test/Hang", &emptypb.Empty{}, &emptypb.Empty{})
	if status.Code(err) != codes.Unavailable || time.Since(start) > 25*time.Second {
		t.Fatalf("a call to a silent server: %v after %s; want UNAVAILABLE after a ping went unanswered", err, time.Since(start).Round(time.Second))
	}
}
