package pgdb

import "crypto/rand"

// ScramVerifierWith is scramVerifier with a given salt and iteration
// count, for tests that compare it with PostgreSQL's own.
var ScramVerifierWith = scramVerifierWith

// FixSalt makes every verifier's salt salt until the returned function
// restores the random one. Not for parallel tests.
func FixSalt(salt []byte) (restore func()) {
	saltFrom = func(b []byte) (int, error) { return copy(b, salt), nil }
	return func() { saltFrom = rand.Read }
}

// CheckAppRole is checkAppRole, for a role of the test's own.
var CheckAppRole = checkAppRole

// PoolConfig is poolConfig.
var PoolConfig = poolConfig
