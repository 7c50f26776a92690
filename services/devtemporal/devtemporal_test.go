package devtemporal

import (
	"cmp"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
)

func hello(ctx workflow.Context, name string) (string, error) {
	if err := workflow.Sleep(ctx, 10*time.Millisecond); err != nil {
		return "", err
	}
	return "hello " + name, nil
}

// The embedded server persists to its data folder: a workflow started
// before a restart can be read after it.
func TestServerSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	run := func(id string, want bool) {
		s, c := startDialled(t, dir, "")
		defer s.Stop()
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if want {
			w := worker.New(c, "q", worker.Options{})
			w.RegisterWorkflow(hello)
			if err := w.Start(); err != nil {
				t.Fatal(err)
			}
			defer w.Stop()
			run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: "q"}, hello, "handoff")
			if err != nil {
				t.Fatal(err)
			}
			var out string
			if err := run.Get(ctx, &out); err != nil || out != "hello handoff" {
				t.Fatalf("result %q, %v", out, err)
			}
			return
		}
		var out string
		if err := c.GetWorkflow(ctx, id, "").Get(ctx, &out); err != nil || out != "hello handoff" {
			t.Fatalf("after restart: %q, %v", out, err)
		}
	}
	run("persisted", true)
	run("persisted", false)
}

// startDialled starts a server over dir and dials it; what, if given,
// names the start in a failure.
func startDialled(t *testing.T, dir, what string) (*Server, client.Client) {
	t.Helper()
	s, err := Start(Config{DataDir: dir, Port: freePortT(t)})
	if err != nil {
		t.Fatalf("%s: %v", cmp.Or(what, "start"), err)
	}
	c, err := client.Dial(client.Options{HostPort: s.HostPort})
	if err != nil {
		s.Stop()
		t.Fatal(err)
	}
	return s, c
}

func freePortT(t *testing.T) int {
	p, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The server's services get ports no other of them has, nor the frontend's,
// even when the source of free ports repeats itself (it releases each port
// it finds, so a port it found stays free until the server binds it).
// A frontend port already taken is an error saying so, not a panic from
// inside the server.
func TestTakenPortIsAnError(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	srv, err := Start(Config{DataDir: t.TempDir(), Port: l.Addr().(*net.TCPAddr).Port})
	if err == nil {
		_ = srv.Stop()
		t.Fatal("started on a taken port")
	}
	if !strings.Contains(err.Error(), "is taken") {
		t.Fatalf("error %v; want it to say the port is taken", err)
	}
}

func TestPortsAreDistinct(t *testing.T) {
	seq := []int{7233, 20001, 20001, 20002, 7233, 20003}
	i := 0
	pick := distinct(func() (int, error) { i++; return seq[(i-1)%len(seq)], nil }, 7233)
	var got []int
	for range 3 {
		p, err := pick()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, p)
	}
	if got[0] != 20001 || got[1] != 20002 || got[2] != 20003 {
		t.Fatalf("ports %v; want 20001, 20002, 20003", got)
	}
}

// The server's database runs in write-ahead-log mode with normal syncs, as
// the settings ask: SQLite ignores a pragma it does not know, so a misnamed
// setting would leave it on a rollback journal synced on every commit.
func TestDatabaseUsesWriteAheadLog(t *testing.T) {
	dir := t.TempDir()
	s, err := Start(Config{DataDir: dir, Port: freePortT(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	f, err := os.Open(filepath.Join(dir, "temporal.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Bytes 18 and 19 of the header are the file format's write and read
	// versions: 1 for a rollback journal, 2 for WAL.
	header := make([]byte, 20)
	if _, err := io.ReadFull(f, header); err != nil {
		t.Fatal(err)
	}
	if header[18] != 2 || header[19] != 2 {
		t.Fatalf("file format versions %d, %d; want 2, 2 (WAL)", header[18], header[19])
	}
}

// A first start cut short leaves no file a later start takes as set up: an
// empty database file (as a start before setUp left one) and a half-made
// schema beside it are made again, and the server starts.
func TestStartCutShortIsSetUpAgain(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"temporal.db", "temporal.db.setup"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s, c := startDialled(t, dir, "start over an empty database file")
	defer s.Stop()
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.WorkflowService().GetSystemInfo(ctx, nil); err != nil {
		t.Fatalf("the server set up again does not answer: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "temporal.db.setup")); !os.IsNotExist(err) {
		t.Fatalf("the schema's working file is left: %v", err)
	}
}
