package telemetry

import (
	"errors"
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
	var pg *pgconn.PgError
	if errors.As(err, &pg) && pg != nil {
		safe := "PostgreSQL error SQLSTATE " + pg.Code
		if pg.ConstraintName != "" {
			safe += " (constraint " + pg.ConstraintName + ")"
		} else if pg.TableName != "" {
			safe += " (table " + pg.TableName + ")"
		}
		text = strings.ReplaceAll(text, pg.Error(), safe)
	}
	for e := err; e != nil; e = errors.Unwrap(e) {
		if msg := e.Error(); strings.HasPrefix(msg, "proto:") {
			text = strings.ReplaceAll(text, msg, fmt.Sprintf("proto: a message did not decode (%T, text withheld)", e))
			break
		}
	}
	return text
}
