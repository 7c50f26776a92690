package main

import (
	"strings"
	"testing"
)

// PostgreSQL off this machine is reached only over TLS that verifies the
// server, unless the network is trusted; this machine may be reached in
// clear.
func TestDatabaseTransport(t *testing.T) {
	for _, c := range []struct {
		dsn     string
		trusted bool
		ok      bool
	}{
		{"postgres://u@db.example:5432/h?sslmode=disable", false, false},
		{"postgres://u@db.example:5432/h", false, false}, // prefer: falls back to plaintext
		{"postgres://u@db.example:5432/h?sslmode=require", false, false},
		{"postgres://u@db.example:5432/h?sslmode=verify-full", false, true},
		{"postgres://u@db.example:5432/h?sslmode=verify-ca", false, true},
		{"postgres://u@db.example:5432/h?sslmode=disable", true, true},
		{"postgres://u@127.0.0.1:5432/h?sslmode=disable", false, true},
		{"postgres://u@localhost/h?sslmode=disable", false, true},
		{"host=/var/run/postgresql user=u dbname=h sslmode=disable", false, true},
		// Every host of a list counts.
		{"postgres://u@127.0.0.1:5432,db.example:5432/h?sslmode=disable", false, false},
	} {
		err := databaseTransport(c.dsn, c.trusted)
		if (err == nil) != c.ok {
			t.Errorf("%s (trusted %v): %v; want ok %v", c.dsn, c.trusted, err, c.ok)
		}
		if err != nil && strings.Contains(err.Error(), "u@") {
			t.Errorf("the refusal repeats the URL: %v", err)
		}
	}
}
