// Package devtemporal runs a single-node Temporal server inside the
// process, persisted to a SQLite file, for the local development stack.
// Production points Handoff at a real Temporal cluster instead.
package devtemporal

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"go.temporal.io/server/common/cluster"
	"go.temporal.io/server/common/config"
	"go.temporal.io/server/common/log"
	sqliteplugin "go.temporal.io/server/common/persistence/sql/sqlplugin/sqlite"
	"go.temporal.io/server/schema/sqlite"
	"go.temporal.io/server/temporal"

	"github.com/handoff-health/handoff/services/loopback"
)

// Config configures the server.
type Config struct {
	// DataDir holds the SQLite file, so workflows survive a restart.
	DataDir string
	// Port is the frontend (gRPC) port on 127.0.0.1; default 7233.
	Port int
	// Namespace is created on start if missing; default "default".
	Namespace string
}

// Server is a running embedded Temporal server.
type Server struct {
	srv      temporal.Server
	HostPort string
}

// setUp makes the server's schema in a file of its own, then moves it to
// dbFile: the schema is made one statement at a time, and a first start cut
// short (Ctrl-C, a full disk) would otherwise leave a file every later
// start takes as set up, and fails on deep inside the server. An empty
// dbFile, left so by a start before this one, is made again.
func setUp(store config.SQL, dbFile string) error {
	tmp := dbFile + ".setup"
	for _, f := range []string{tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("devtemporal: remove %s: %w", f, err)
		}
	}
	// A rollback journal while it is made, so that nothing of it is left
	// in a log beside the file when it moves; the server's connections
	// turn the file to WAL.
	store.DatabaseName, store.ConnectAttributes = tmp, map[string]string{"mode": "rwc"}
	if err := sqlite.SetupSchema(&store); err != nil {
		return fmt.Errorf("devtemporal: create schema: %w", err)
	}
	// A log or journal the cut-short start left beside dbFile would be
	// laid over the new schema when it opens.
	for _, f := range []string{dbFile + "-wal", dbFile + "-shm", dbFile + "-journal"} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("devtemporal: remove %s: %w", f, err)
		}
	}
	if err := os.Rename(tmp, dbFile); err != nil {
		return fmt.Errorf("devtemporal: create schema: %w", err)
	}
	return nil
}

// Start starts the server; it returns once the frontend accepts connections.
func Start(cfg Config) (*Server, error) {
	if cfg.Port == 0 {
		cfg.Port = 7233
	}
	if cfg.Namespace == "" {
		cfg.Namespace = "default"
	}
	// The server reports a port it cannot bind through its logger's Fatal,
	// which the no-op logger passes over: the frontend then serves a nil
	// listener and the process panics. Asked here, the answer is an error.
	hostPort := fmt.Sprintf("127.0.0.1:%d", cfg.Port)
	l, err := net.Listen("tcp", hostPort)
	if err != nil {
		return nil, fmt.Errorf("devtemporal: %s is taken (another Temporal server, or make run already running?): %w", hostPort, err)
	}
	l.Close()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("devtemporal: data dir: %w", err)
	}
	dbFile := filepath.Join(cfg.DataDir, "temporal.db")
	store := config.SQL{
		PluginName:   sqliteplugin.PluginName,
		DatabaseName: dbFile,
		// Every attribute but SQLite's URI parameters becomes a pragma of
		// that exact name, and SQLite ignores one it does not know: the
		// names take no prefix. WAL with normal syncs makes a commit one
		// append to the log instead of a rollback journal written, synced
		// and deleted.
		ConnectAttributes: map[string]string{"mode": "rwc", "journal_mode": "wal", "synchronous": "normal"},
	}
	if fi, err := os.Stat(dbFile); errors.Is(err, os.ErrNotExist) || err == nil && fi.Size() == 0 {
		if err := setUp(store, dbFile); err != nil {
			return nil, err
		}
	}
	const clusterName = "active"
	ns, err := sqlite.NewNamespaceConfig(clusterName, cfg.Namespace, false, nil)
	if err != nil {
		return nil, fmt.Errorf("devtemporal: namespace: %w", err)
	}
	if err := sqlite.CreateNamespaces(&store, ns); err != nil {
		return nil, fmt.Errorf("devtemporal: namespace: %w", err)
	}
	// Each free port is released before the server binds it, so it is
	// still free for the next pick: without this, two of the server's
	// services could be given one port, and the second to bind it finds
	// no listener and crashes the process.
	pick := distinct(freePort, cfg.Port)
	service := func(grpcPort int) (config.Service, error) {
		membership, err := pick()
		if err != nil {
			return config.Service{}, err
		}
		if grpcPort == 0 {
			if grpcPort, err = pick(); err != nil {
				return config.Service{}, err
			}
		}
		return config.Service{RPC: config.RPC{GRPCPort: grpcPort, MembershipPort: membership, BindOnIP: "127.0.0.1"}}, nil
	}
	services := map[string]config.Service{}
	for name, port := range map[string]int{"frontend": cfg.Port, "history": 0, "matching": 0, "worker": 0} {
		s, err := service(port)
		if err != nil {
			return nil, err
		}
		services[name] = s
	}
	conf := &config.Config{
		Global: config.Global{Membership: config.Membership{MaxJoinDuration: 30 * time.Second, BroadcastAddress: "127.0.0.1"}},
		Persistence: config.Persistence{
			DefaultStore: sqliteplugin.PluginName, VisibilityStore: sqliteplugin.PluginName, NumHistoryShards: 1,
			DataStores: map[string]config.DataStore{sqliteplugin.PluginName: {SQL: &store}},
		},
		ClusterMetadata: &cluster.Config{
			MasterClusterName: clusterName, CurrentClusterName: clusterName, FailoverVersionIncrement: 10,
			ClusterInformation: map[string]cluster.ClusterInformation{
				clusterName: {Enabled: true, InitialFailoverVersion: 1, RPCAddress: hostPort},
			},
		},
		DCRedirectionPolicy: config.DCRedirectionPolicy{Policy: "noop"},
		Services:            services,
		Archival: config.Archival{
			History:    config.HistoryArchival{State: "disabled"},
			Visibility: config.VisibilityArchival{State: "disabled"},
		},
		NamespaceDefaults: config.NamespaceDefaults{Archival: config.ArchivalNamespaceDefaults{
			History:    config.HistoryArchivalNamespaceDefaults{State: "disabled"},
			Visibility: config.VisibilityArchivalNamespaceDefaults{State: "disabled"},
		}},
		PublicClient: config.PublicClient{HostPort: hostPort},
	}
	srv, err := temporal.NewServer(
		temporal.WithConfig(conf),
		temporal.ForServices(temporal.DefaultServices),
		temporal.WithLogger(log.NewNoopLogger()),
	)
	if err != nil {
		return nil, fmt.Errorf("devtemporal: %w", err)
	}
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("devtemporal: start: %w", err)
	}
	// Wait until the frontend listens.
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", hostPort, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			_ = srv.Stop()
			return nil, fmt.Errorf("devtemporal: frontend did not come up on %s", hostPort)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return &Server{srv: srv, HostPort: hostPort}, nil
}

// Stop stops the server.
func (s *Server) Stop() error { return s.srv.Stop() }

// distinct returns ports from free, never one it returned before nor one
// of taken.
func distinct(free func() (int, error), taken ...int) func() (int, error) {
	used := map[int]bool{}
	for _, p := range taken {
		used[p] = true
	}
	return func() (int, error) {
		for range 100 {
			p, err := free()
			if err != nil {
				return 0, err
			}
			if !used[p] {
				used[p] = true
				return p, nil
			}
		}
		return 0, errors.New("devtemporal: no distinct free port")
	}
}

func freePort() (int, error) {
	p, err := loopback.FreePort()
	if err != nil {
		return 0, fmt.Errorf("devtemporal: free port: %w", err)
	}
	return p, nil
}
