package telemetry

import (
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// LogSafe is err's text for a log, the code's own context kept, with the
// two kinds of message that can quote a stored or sent value left out:
// PostgreSQL's (invalid input syntax for type uuid: "…"), said by its
// SQLSTATE and the constraint or table it names, and protobuf's decoding
// errors ("proto: … invalid value …"), said as such. The services'
// handler errors reach the log this way; PostgreSQL's detail, which
// quotes a row, is never in an error's text.
func LogSafe(err error) string {
	if err == nil {
		return ""
	}
	text := err.Error()
	// Every error in the tree, a join's branches too (an outbox relay's
	// poll joins the failures of its lanes): each PostgreSQL error and the
	// first protobuf one of each chain.
	for e := range tree(err) {
		if pg, ok := e.(*pgconn.PgError); ok && pg != nil {
			safe := "PostgreSQL error SQLSTATE " + pg.Code
			if pg.ConstraintName != "" {
				safe += " (constraint " + pg.ConstraintName + ")"
			} else if pg.TableName != "" {
				safe += " (table " + pg.TableName + ")"
			}
			text = strings.ReplaceAll(text, pg.Error(), safe)
			continue
		}
		if msg := e.Error(); strings.HasPrefix(msg, "proto:") {
			text = strings.ReplaceAll(text, msg, fmt.Sprintf("proto: a message did not decode (%T, text withheld)", e))
		}
	}
	return text
}

// tree yields err and every error it wraps, depth first, through both
// forms of Unwrap; a protobuf error's own wrapped errors are not entered
// (its text, replaced whole, holds theirs).
func tree(err error) func(yield func(error) bool) {
	return func(yield func(error) bool) {
		var walk func(error) bool
		walk = func(e error) bool {
			if e == nil {
				return true
			}
			if !yield(e) {
				return false
			}
			if strings.HasPrefix(e.Error(), "proto:") {
				return true
			}
			switch u := e.(type) {
			case interface{ Unwrap() error }:
				return walk(u.Unwrap())
			case interface{ Unwrap() []error }:
				for _, c := range u.Unwrap() {
					if !walk(c) {
						return false
					}
				}
			}
			return true
		}
		walk(err)
	}
}
