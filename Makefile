# Handoff's entry points. `make run` starts the whole system; `make test`
# runs every test. See README.md.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
BUF := go tool -modfile=tools/go.mod buf

.PHONY: all generate check-generated protodeps lint breaking vet test run build bench clean record-histories

all: lint vet test

protodeps:
	@scripts/protodeps.sh

## generate: regenerate gen/ from proto/
generate: protodeps
	$(BUF) generate

## check-generated: fail if gen/ is not what proto/ generates
check-generated: protodeps
	@scripts/check-generated.sh

## lint: buf lint and gofmt
lint: protodeps
	$(BUF) lint
	@unformatted=$$(gofmt -l services workflows bench deploy 2>/dev/null); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi

## breaking: buf breaking against the previous commit, if it had protos
breaking: protodeps
	@scripts/check-breaking.sh

vet:
	go vet ./...
	cd deploy/validate && go vet ./...

## test: every test, against the local PostgreSQL and in-process Temporal
test:
	go test -count=1 ./...

## build: the handoff binary into bin/
build:
	go build -o bin/handoff ./services/cmd/handoff

## run: the whole system on this machine (embedded Temporal, local PostgreSQL),
## with the demonstration clinic; `make run ARGS=--fast` shrinks workflow timings
ARGS ?=
run: build
	@out=$$(scripts/ensure-postgres.sh 2>&1) || { echo "$$out" >&2; exit 1; }
	bin/handoff dev --demo $(ARGS)

## bench: the benchmark suite; writes bench/results/<date>T<time>Z.md and latest.md (about ten minutes)
bench:
	@scripts/ensure-postgres.sh >/dev/null
	go run ./bench

clean:
	rm -rf bin .build

## record-histories: rerun the stack integration tests and save workflow histories for the replay tests
record-histories:
	HANDOFF_RECORD_HISTORIES=1 go test -count=1 -run 'TestAccepted|TestDeclined|TestCancelled|TestOverdoseWithoutABoundary|TestDeletedFamily|TestClosedFamily|TestWithdrawnConsent|TestTreatmentEnteredAfterANo|TestPartialYesToCare|TestRescheduledMeeting|TestRejectedAtCapacity' ./services/stack/
