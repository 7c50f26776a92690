package pgdb_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// A service logging in as its own role works as the application role and
// cannot take the owner's rights back: no RESET ROLE to lift row-level
// security or to rewrite the audit trail.
func TestLoginRoleHasNoOwnerRights(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	owner, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	name := fmt.Sprintf("handoff_login_test_%d", time.Now().UnixNano()%1_000_000_000)
	if err := pgdb.EnsureLoginRole(ctx, owner, name, "s3cret"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = owner.Exec(context.Background(), `DROP ROLE IF EXISTS `+name)
	})
	// Again, without a password: the role exists, and is only granted.
	if err := pgdb.EnsureLoginRole(ctx, owner, name, ""); err != nil {
		t.Fatalf("again: %v", err)
	}
	var ownerName string
	if err := owner.QueryRow(ctx, `SELECT current_user`).Scan(&ownerName); err != nil {
		t.Fatal(err)
	}
	if err := pgdb.EnsureLoginRole(ctx, owner, ownerName, ""); err == nil {
		t.Fatal("the owner was accepted as the services' login role")
	}
	if err := pgdb.EnsureLoginRole(ctx, owner, "x; DROP TABLE audit_log", "p"); err == nil {
		t.Fatal("a malformed role name was accepted")
	}
	// A role made by hand that is a member of the owner could SET ROLE to
	// it: refused, with or without a password to set.
	member := name + "_m"
	if _, err := owner.Exec(ctx, `CREATE ROLE `+member+` LOGIN`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = owner.Exec(context.Background(), `DROP ROLE IF EXISTS `+member) })
	if _, err := owner.Exec(ctx, `GRANT `+pgx.Identifier{ownerName}.Sanitize()+` TO `+member); err != nil {
		t.Fatal(err)
	}
	for _, pw := range []string{"", "s3cret"} {
		if err := pgdb.EnsureLoginRole(ctx, owner, member, pw); err == nil {
			t.Fatalf("a member of the owner was accepted as the services' login role (password %q)", pw)
		}
	}
	// So is one that reaches a superuser through a role between (SET ROLE
	// goes up the chain), or is a member of a role that can create roles,
	// and one that can create roles itself when no password comes to
	// take that away.
	between, chained, creator, maker := name+"_b", name+"_c", name+"_r", name+"_k"
	for _, stmt := range []string{
		`CREATE ROLE ` + between + ` NOLOGIN BYPASSRLS`, `CREATE ROLE ` + chained + ` LOGIN`,
		`CREATE ROLE ` + creator + ` NOLOGIN CREATEROLE`, `CREATE ROLE ` + maker + ` LOGIN CREATEROLE`,
	} {
		if _, err := owner.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, r := range []string{chained, between, creator, maker} {
			_, _ = owner.Exec(context.Background(), `DROP ROLE IF EXISTS `+r)
		}
	})
	mid := name + "_mid"
	if _, err := owner.Exec(ctx, `CREATE ROLE `+mid+` NOLOGIN`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = owner.Exec(context.Background(), `DROP ROLE IF EXISTS `+mid) })
	for _, stmt := range []string{`GRANT ` + between + ` TO ` + mid, `GRANT ` + mid + ` TO ` + chained, `GRANT ` + creator + ` TO ` + member} {
		if _, err := owner.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	if err := pgdb.EnsureLoginRole(ctx, owner, chained, "s3cret"); err == nil {
		t.Fatal("a role reaching one that bypasses row-level security, two grants up, was accepted")
	}
	if _, err := owner.Exec(ctx, `REVOKE `+pgx.Identifier{ownerName}.Sanitize()+` FROM `+member); err != nil {
		t.Fatal(err)
	}
	if err := pgdb.EnsureLoginRole(ctx, owner, member, "s3cret"); err == nil {
		t.Fatal("a member of a role that can create roles was accepted")
	}
	if err := pgdb.EnsureLoginRole(ctx, owner, maker, ""); err == nil {
		t.Fatal("a role that can create roles was accepted with no password to take that away")
	}
	var creates bool
	if err := pgdb.EnsureLoginRole(ctx, owner, maker, "s3cret"); err != nil {
		t.Fatalf("a role whose right to create roles the password's ALTER ROLE takes away: %v", err)
	}
	if err := owner.QueryRow(ctx, `SELECT rolcreaterole FROM pg_roles WHERE rolname = $1::text`, maker).Scan(&creates); err != nil || creates {
		t.Fatalf("after it, the role can create roles: %v (%v)", creates, err)
	}
	// Refused before anything was granted to it.
	var granted bool
	if err := owner.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
		JOIN pg_roles u ON u.oid = m.member WHERE g.rolname = $2::text AND u.rolname = $1::text)`, member, pgdb.AppRole).Scan(&granted); err != nil || granted {
		t.Fatalf("the refused role was granted %s anyway (%v)", pgdb.AppRole, err)
	}

	u, err := url.Parse(pgtest.URL())
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(name, "s3cret")
	db, err := pgdb.OpenApp(ctx, u.String(), schema)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Pool.Close()
	scoped := pgdb.WithClinic(ctx, "north")
	if _, err := db.Exec(scoped, `INSERT INTO audit_log (clinic, subject, roles, method, outcome) VALUES ('north', 's', '{}', 'm', 'OK')`); err != nil {
		t.Fatalf("the login role cannot do the application's work: %v", err)
	}
	// A process that does not migrate takes this role, and not the owner
	// (here a superuser) logged in through OpenApp.
	if err := pgdb.CheckLoginRole(ctx, db, schema); err != nil {
		t.Fatalf("the services' login role: %v", err)
	}
	if err := pgdb.CheckLoginRole(ctx, pgtest.App(t, schema), schema); err == nil {
		t.Fatal("the owner's login was taken for the services' own role")
	}
	// Nor one granted since a way past row security that EnsureLoginRole
	// refuses: both judge by the same condition.
	if _, err := owner.Exec(ctx, `GRANT pg_write_all_data TO `+name); err != nil {
		t.Fatal(err)
	}
	if err := pgdb.CheckLoginRole(ctx, db, schema); err == nil {
		t.Fatal("a login role that may write every table was taken for the services' own role")
	}
	if _, err := owner.Exec(ctx, `REVOKE pg_write_all_data FROM `+name); err != nil {
		t.Fatal(err)
	}

	var policy string
	if err := owner.QueryRow(ctx, `SELECT policyname FROM pg_policies WHERE schemaname = $1 AND tablename = 'audit_log' LIMIT 1`,
		schema).Scan(&policy); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, stmt := range []string{
		`RESET ROLE`, // a no-op here: the login role has nothing more
		`ALTER TABLE ` + schema + `.audit_log NO FORCE ROW LEVEL SECURITY`,
		`DELETE FROM ` + schema + `.audit_log`,
		`DROP POLICY ` + pgx.Identifier{policy}.Sanitize() + ` ON ` + schema + `.audit_log`,
	} {
		_, err := conn.Exec(ctx, stmt)
		if stmt == `RESET ROLE` {
			if err != nil {
				t.Fatalf("%s: %v", stmt, err)
			}
			continue
		}
		if err == nil || !(strings.Contains(err.Error(), "permission denied") || strings.Contains(err.Error(), "must be owner")) {
			t.Errorf("%s: %v, want a refusal", stmt, err)
		}
	}
}

// The login role's password reaches PostgreSQL as its SCRAM-SHA-256
// verifier, never in clear: the verifier is the one PostgreSQL derives
// itself (checked against one it made from the same password, salt and
// iterations), and it is stored as sent (with the salt fixed here; a
// password in clear would get a random salt from the server). A password
// PostgreSQL would prepare with SASLprep first goes in clear. Not
// parallel: it fixes the package's salt.
func TestLoginRolePasswordIsSentAsItsVerifier(t *testing.T) {
	ctx := context.Background()
	owner, _ := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	name := fmt.Sprintf("handoff_scram_test_%d", time.Now().UnixNano()%1_000_000_000)
	t.Cleanup(func() {
		_, _ = owner.Exec(context.Background(), `DROP ROLE IF EXISTS `+name)
		_, _ = owner.Exec(context.Background(), `DROP ROLE IF EXISTS `+name+`_pg`)
	})
	stored := func(role string) string {
		t.Helper()
		var v string
		if err := owner.QueryRow(ctx, `SELECT rolpassword FROM pg_authid WHERE rolname = $1`, role).Scan(&v); err != nil {
			t.Fatalf("read the stored password of %s (the tests' owner must be a superuser): %v", role, err)
		}
		return v
	}
	// PostgreSQL's own verifier of the same password.
	const password = "correct horse: battery staple!"
	conn, err := owner.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SET password_encryption = 'scram-sha-256'`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `CREATE ROLE `+name+`_pg PASSWORD '`+password+`'`); err != nil {
		t.Fatal(err)
	}
	theirs := stored(name + "_pg")
	var iterations int
	var salt64, rest string
	if head, tail, ok := strings.Cut(strings.TrimPrefix(theirs, "SCRAM-SHA-256$"), "$"); ok {
		rest = tail
		if n, err := fmt.Sscanf(strings.Replace(head, ":", " ", 1), "%d %s", &iterations, &salt64); n != 2 || err != nil {
			t.Fatalf("PostgreSQL's verifier %q: %v", theirs, err)
		}
	}
	salt, err := base64.StdEncoding.DecodeString(salt64)
	if err != nil || rest == "" {
		t.Fatalf("PostgreSQL's verifier %q: %v", theirs, err)
	}
	ours, err := pgdb.ScramVerifierWith(password, salt, iterations)
	if err != nil || ours != theirs {
		t.Fatalf("our verifier %q, %v; PostgreSQL's %q", ours, err, theirs)
	}
	// EnsureLoginRole sends a verifier, which PostgreSQL keeps as it is.
	fixed := []byte("0123456789abcdef")
	restore := pgdb.FixSalt(fixed)
	err = pgdb.EnsureLoginRole(ctx, owner, name, password)
	restore()
	if err != nil {
		t.Fatal(err)
	}
	got := stored(name)
	if want, err := pgdb.ScramVerifierWith(password, fixed, 4096); err != nil || got != want {
		t.Fatalf("stored %q; want the verifier sent, %q (%v)", got, want, err)
	}
	// A password PostgreSQL prepares with SASLprep goes in clear, as
	// before, for the server to hash: the salt is then its own.
	if err := pgdb.EnsureLoginRole(ctx, owner, name, "pässword"); err != nil {
		t.Fatalf("a password needing SASLprep: %v", err)
	}
	if now := stored(name); now == got || !strings.HasPrefix(now, "SCRAM-SHA-256$4096:") || strings.Contains(now, base64.StdEncoding.EncodeToString(fixed)) {
		t.Fatalf("stored %q after a non-ASCII password; want the server's own verifier", now)
	}
}

// Replication and the server's file and program roles get past row-level
// security (logical decoding, raw table files, COPY TO PROGRAM): a login
// role with them is refused; its own REPLICATION goes with a password, as
// its CREATEROLE does.
func TestLoginRoleCannotReplicateOrReadServerFiles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	owner, _ := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	base := fmt.Sprintf("handoff_repl_test_%d", time.Now().UnixNano()%1_000_000_000)
	replicator, reader, runner := base+"_r", base+"_f", base+"_p"
	for _, stmt := range []string{
		`CREATE ROLE ` + replicator + ` LOGIN REPLICATION`,
		`CREATE ROLE ` + reader + ` LOGIN`, `GRANT pg_read_server_files TO ` + reader,
		`CREATE ROLE ` + runner + ` LOGIN`, `GRANT pg_execute_server_program TO ` + runner,
	} {
		if _, err := owner.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, r := range []string{replicator, reader, runner} {
			_, _ = owner.Exec(context.Background(), `DROP ROLE IF EXISTS `+r)
		}
	})
	for _, r := range []string{reader, runner} {
		for _, pw := range []string{"", "s3cret"} {
			if err := pgdb.EnsureLoginRole(ctx, owner, r, pw); err == nil {
				t.Fatalf("%s, a member of a server file or program role, was accepted (password %q)", r, pw)
			}
		}
	}
	if err := pgdb.EnsureLoginRole(ctx, owner, replicator, ""); err == nil {
		t.Fatal("a role that can replicate was accepted with no password to take that away")
	}
	if err := pgdb.EnsureLoginRole(ctx, owner, replicator, "s3cret"); err != nil {
		t.Fatalf("a role whose replication the password's ALTER ROLE takes away: %v", err)
	}
	var replicates bool
	if err := owner.QueryRow(ctx, `SELECT rolreplication FROM pg_roles WHERE rolname = $1::text`, replicator).Scan(&replicates); err != nil || replicates {
		t.Fatalf("after it, the role can replicate: %v (%v)", replicates, err)
	}
}

// The application role is refused if it gets past row-level security,
// as one made by hand before Migrate (which leaves it as it is) may: a
// superuser or BYPASSRLS role would show every clinic's rows.
func TestAppRoleThatBypassesRowSecurityIsRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	owner, _ := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	base := fmt.Sprintf("handoff_app_test_%d", time.Now().UnixNano()%1_000_000_000)
	for attrs, refused := range map[string]bool{"NOSUPERUSER NOBYPASSRLS": false, "BYPASSRLS": true, "SUPERUSER": true} {
		name := base + "_" + strings.ToLower(strings.Fields(attrs)[0])
		if _, err := owner.Exec(ctx, `CREATE ROLE `+name+` NOLOGIN `+attrs); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = owner.Exec(context.Background(), `DROP ROLE IF EXISTS `+name) })
		if err := pgdb.CheckAppRole(ctx, owner, name); (err != nil) != refused {
			t.Errorf("a role %s: %v; want refused %v", attrs, err, refused)
		}
	}
	// The role Migrate made passes, as every service opening its pool shows.
	if err := pgdb.CheckAppRole(ctx, owner, pgdb.AppRole); err != nil {
		t.Fatal(err)
	}
}

// A login role that may rewrite the append-only records by a way other
// than the application role (pg_write_all_data, a right granted to it or
// to a group of it) is refused before anything is granted to it: the
// application role's REVOKE does not reach those rights.
func TestLoginRoleThatMayRewriteTheRecordsIsRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	owner, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	base := fmt.Sprintf("handoff_rewrite_test_%d", time.Now().UnixNano()%1_000_000_000)
	writer, direct, grouped, group := base+"_w", base+"_d", base+"_g", base+"_grp"
	aloof, column, terms := base+"_n", base+"_c", base+"_t"
	for _, stmt := range []string{
		`CREATE ROLE ` + writer + ` LOGIN`, `GRANT pg_write_all_data TO ` + writer,
		`CREATE ROLE ` + direct + ` LOGIN`, `GRANT DELETE ON ` + schema + `.audit_log TO ` + direct,
		`CREATE ROLE ` + group + ` NOLOGIN`, `GRANT UPDATE ON ` + schema + `.audit_log TO ` + group,
		`CREATE ROLE ` + grouped + ` LOGIN`, `GRANT ` + group + ` TO ` + grouped,
		// Not inheriting the group's rights, it may still SET ROLE to it.
		`CREATE ROLE ` + aloof + ` LOGIN NOINHERIT`, `GRANT ` + group + ` TO ` + aloof,
		`CREATE ROLE ` + column + ` LOGIN`, `GRANT UPDATE (outcome) ON ` + schema + `.audit_log TO ` + column,
		// A consent's terms, widened after it was signed (the families
		// service's table, as its columns go).
		`CREATE TABLE ` + schema + `.consents (clinic text, expire_time timestamptz, revoke_time timestamptz, update_time timestamptz, version bigint)`,
		`CREATE ROLE ` + terms + ` LOGIN`, `GRANT UPDATE (expire_time) ON ` + schema + `.consents TO ` + terms,
	} {
		if _, err := owner.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	t.Cleanup(func() {
		for _, stmt := range []string{`REVOKE ALL ON ` + schema + `.audit_log FROM ` + direct + `, ` + group + `, ` + column,
			`REVOKE ALL ON ` + schema + `.consents FROM ` + terms + `, ` + direct, `DROP ROLE IF EXISTS ` + terms,
			`DROP ROLE IF EXISTS ` + writer, `DROP ROLE IF EXISTS ` + direct, `DROP ROLE IF EXISTS ` + grouped,
			`DROP ROLE IF EXISTS ` + aloof, `DROP ROLE IF EXISTS ` + column, `DROP ROLE IF EXISTS ` + group} {
			_, _ = owner.Exec(context.Background(), stmt)
		}
	})
	for _, c := range []struct{ role, how, want string }{
		{writer, "a member of pg_write_all_data", "pg_write_all_data"},
		{direct, "granted DELETE on the audit log", schema + ".audit_log"},
		{grouped, "a member of a group granted UPDATE on the audit log", schema + ".audit_log"},
		{aloof, "a member, not inheriting, of a group granted UPDATE on the audit log", schema + ".audit_log"},
		{column, "granted UPDATE on a column of the audit log", schema + ".audit_log"},
		{terms, "granted UPDATE on a consent's expiry", schema + ".consents"},
	} {
		for _, pw := range []string{"", "s3cret"} {
			err := pgdb.EnsureLoginRole(ctx, owner, c.role, pw)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("a role %s (password %q): %v; want a refusal naming %s", c.how, pw, err, c.want)
			}
		}
		var granted bool
		if err := owner.QueryRow(ctx, `SELECT pg_has_role($1::text, $2::text, 'MEMBER')`, c.role, pgdb.AppRole).Scan(&granted); err != nil || granted {
			t.Fatalf("the refused role %s was granted %s anyway (%v)", c.role, pgdb.AppRole, err)
		}
	}
	// Its right taken away, and given the revocation's stamp on a
	// consent as AppRole has it, the same role is accepted.
	for _, stmt := range []string{`REVOKE DELETE ON ` + schema + `.audit_log FROM ` + direct,
		`GRANT UPDATE (revoke_time, update_time, version) ON ` + schema + `.consents TO ` + direct} {
		if _, err := owner.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	if err := pgdb.EnsureLoginRole(ctx, owner, direct, ""); err != nil {
		t.Fatalf("the role once its right on the audit log is revoked: %v", err)
	}
}
