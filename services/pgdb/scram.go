package pgdb

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
)

// scramIterations is PostgreSQL's own default (scram_iterations).
const scramIterations = 4096

// saltFrom fills a new verifier's salt; tests fix it.
var saltFrom = rand.Read

// scramVerifier is the SCRAM-SHA-256 secret PostgreSQL keeps for password
// (RFC 5802, RFC 7677), in the form it stores: given to CREATE or ALTER
// ROLE ... PASSWORD, it is stored as it is. The password itself is then
// never in a statement's text, which the server may log (log_statement)
// or keep (pg_stat_statements). ok is false for a password with a byte
// outside ASCII: PostgreSQL prepares those with SASLprep first (an ASCII
// one it takes as it is), which this does not do.
func scramVerifier(password string) (verifier string, ok bool, err error) {
	if !ascii(password) {
		return "", false, nil
	}
	var salt [16]byte
	if _, err := saltFrom(salt[:]); err != nil {
		return "", false, fmt.Errorf("pgdb: salt: %w", err)
	}
	v, err := scramVerifierWith(password, salt[:], scramIterations)
	return v, err == nil, err
}

// ascii reports whether s is ASCII without NUL, as PostgreSQL takes a
// password without SASLprep.
func ascii(s string) bool {
	for _, c := range []byte(s) {
		if c == 0 || c > 0x7f {
			return false
		}
	}
	return true
}

// scramVerifierWith is scramVerifier's work, for an ASCII password (which
// scramVerifier checks), with a given salt and iteration count.
func scramVerifierWith(password string, salt []byte, iterations int) (string, error) {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		return "", fmt.Errorf("pgdb: derive the password's key: %w", err)
	}
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	stored := sha256.Sum256(mac(salted, "Client Key"))
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iterations, b64(salt), b64(stored[:]), b64(mac(salted, "Server Key"))), nil
}
