# Every README command goes through here. CI runs `make test` (see .ci/run).
CARGO ?= cargo
FUZZ_SECONDS ?= 60

.PHONY: all build run test lint fmt bench benchmarks fuzz clean memory bench-tls deps test-deps soak

all: build

build:
	$(CARGO) build --workspace --release

## run: Mirage with a co-located local Ghost, embedded storage and the dashboard
## (http://127.0.0.1:7000/). Ctrl-C stops both.
run: deps
	$(CARGO) build --release -p mirage -p ghost
	./target/release/mirage up

## test: formatting, lints, then every unit, conformance, property and end-to-end test.
test: test-deps lint
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc

## deps: Debian packages the build needs (installed only when missing).
deps:
	@bash scripts/deps.sh

test-deps:
	@bash scripts/deps.sh --test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## bench: criterion codec benchmarks (figures go to BENCHMARKS.md by hand, with the command).
bench:
	$(CARGO) bench -p shared --bench codec

## benchmarks: every bench scenario at full size (release; about 20 minutes), each result
## appended to BENCHMARKS.md. One scenario: `cargo run --release -p e2e --bin bench -- --help`.
BENCH = ./target/release/bench
benchmarks:
	$(CARGO) build --release -p mirage -p ghost
	$(CARGO) build --release -p e2e --bin bench
	$(BENCH) codec
	$(BENCH) loop --intents 50000 --concurrency 16 --ghosts 4
	$(BENCH) loop --intents 50000 --concurrency 64 --ghosts 4
	$(BENCH) loop --intents 5000 --concurrency 1 --ghosts 4
	$(BENCH) events --sessions 1 --events 500000
	$(BENCH) events --sessions 16 --events 50000
	$(BENCH) events --sessions 1 --events 20000 --window 1
	$(BENCH) loop --intents 5000 --concurrency 1 --ghosts 1 --real
	$(BENCH) loop --intents 20000 --concurrency 16 --ghosts 1 --real
	$(BENCH) fanout --ghosts 2000
	$(BENCH) sessions --count 1000 --seconds 30
	$(BENCH) sessions --count 10000 --seconds 60
	$(BENCH) storm --count 10000
	$(BENCH) sweep
	$(BENCH) sustained --seconds 600 --rate 2000

## memory: 100,000 one-step intents through the full loop; prints RSS after 10k and 100k.
memory:
	$(CARGO) test -p e2e --release --test memory -- --ignored --nocapture

## bench-tls: 1,000 mTLS Ghost sessions (swarm) held by one Mirage; RSS and re-registration time.
bench-tls:
	SESSIONS=1000 $(CARGO) test -p e2e --release --test swarm -- --ignored --nocapture mtls_sessions

## soak: seeded random faults (proxy cut, partition, ack stall, Ghost and Mirage SIGKILL) over
## many short intents, then the invariants. Runs until SOAK_FAULTS faults (default 1000, about
## 20-25 min) or SOAK_SECONDS (default 3600); SEED reproduces a schedule (a fresh one is printed
## when absent). A 25 s run is part of `make test`.
soak:
	SEED=$(SEED) SOAK_FAULTS=$(SOAK_FAULTS) SOAK_SECONDS=$(SOAK_SECONDS) $(CARGO) test -p e2e --test soak -- --ignored --nocapture soak_long

## fuzz: every cargo-fuzz target for FUZZ_SECONDS each (needs the nightly toolchain).
fuzz:
	cd fuzz && FUZZ_SECONDS=$(FUZZ_SECONDS) ./run.sh

clean:
	$(CARGO) clean
