package pgdb

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
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
// or keep (pg_stat_statements). Only printable ASCII is taken: PostgreSQL
// prepares other passwords with SASLprep first, which this does not do.
func scramVerifier(password string) (string, error) {
	var salt [16]byte
	if _, err := saltFrom(salt[:]); err != nil {
		return "", fmt.Errorf("pgdb: salt: %w", err)
	}
	return scramVerifierWith(password, salt[:], scramIterations)
}

func scramVerifierWith(password string, salt []byte, iterations int) (string, error) {
	for _, c := range []byte(password) {
		if c < 0x20 || c > 0x7e {
			return "", errors.New("pgdb: the login role's password must be printable ASCII")
		}
	}
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
