# Every README command goes through here. CI runs `make test` (see .ci/run).
CARGO ?= cargo
FUZZ_SECONDS ?= 60

.PHONY: all build run test lint fmt bench benchmarks fuzz clean memory bench-tls deps test-deps soak soak-raft soak-etcd

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
	bash scripts/cycles.sh --check
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
	$(BENCH) loop-real --intents 5000 --concurrency 1 --ghosts 1
	$(BENCH) loop-real --intents 20000 --concurrency 16 --ghosts 4
	$(BENCH) loop-real --intents 2000 --concurrency 1 --ghosts 1 --trace
	$(BENCH) ghost-rss --commands 100000
	$(BENCH) fanout --ghosts 2000
	$(BENCH) sessions --count 1000 --seconds 30
	$(BENCH) sessions --count 10000 --seconds 60
	$(BENCH) storm --count 10000
	$(BENCH) sweep
	$(BENCH) sustained --seconds 600 --rate 2000

## ghost-rss-long: a real `ghost serve`'s RSS over 1 M commands (~10 minutes).
ghost-rss-long:
	$(CARGO) build --release -p mirage -p ghost -p e2e --bin bench --bin mirage --bin ghost
	$(BENCH) ghost-rss --commands 1000000

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

## soak-raft: the raft-node linearizability run (leader kills, partitions) at length.
## SEED picks the fault and operation schedule; OPS (default 20000) the history size.
soak-raft:
	RAFT_SEED=$(SEED) RAFT_OPS=$(OPS) $(CARGO) test -p e2e --test raft_linearizable -- --ignored --nocapture soak_raft_linearizable

## soak-etcd: three Mirages on a 3-member etcd, three Ghosts; SOAK_KILLS (default 5) rounds of
## ten intents and a SIGKILL of the leader (restarted as a follower); then every intent
## satisfied, every append once. SEED picks the schedule (default 1). Needs etcd.
soak-etcd:
	SEED=$(SEED) SOAK_KILLS=$(SOAK_KILLS) $(CARGO) test -p e2e --test ha_failover -- --ignored --nocapture soak_etcd_leader_kills

## fuzz: every cargo-fuzz target for FUZZ_SECONDS each (needs the nightly toolchain).
fuzz:
	cd fuzz && FUZZ_SECONDS=$(FUZZ_SECONDS) ./run.sh

clean:
	$(CARGO) clean

.PHONY: deb ghost-static
.PHONY: ghost-rss-long

## deb: a Debian package of both binaries, their systemd units (packaging/systemd), the
## default configs and man pages, with cargo-deb (installed when missing); lists its contents.
## Release build, so not part of `make test` (which checks the units and the metadata).
deb:
	@command -v cargo-deb >/dev/null || $(CARGO) install cargo-deb --locked
	$(CARGO) build --release -p mirage -p ghost
	rm -rf target/man target/completions && mkdir -p target/man target/completions
	./target/release/mirage man --out target/man
	./target/release/ghost man --out target/man
	./target/release/mirage completions bash > target/completions/mirage.bash
	./target/release/ghost completions bash > target/completions/ghost.bash
	$(CARGO) deb -p mirage --no-build --strip
	dpkg-deb -c target/debian/mirage-ghost_*.deb

## ghost-static: a static, stripped musl `ghost` for small edge boards (target/ghost-static):
## OpenSSL and SQLite built from source with musl-gcc (Debian package musl-tools).
MUSL = x86_64-unknown-linux-musl
TGT = $(or $(CARGO_TARGET_DIR),target)
ghost-static:
	rustup target add $(MUSL)
	@command -v musl-gcc >/dev/null || apt-get install -y musl-tools
	CC_x86_64_unknown_linux_musl=musl-gcc $(CARGO) build --release -p ghost --target $(MUSL) --features vendored-openssl
	strip -o $(TGT)/ghost-static $(TGT)/$(MUSL)/release/ghost
	file $(TGT)/ghost-static
	ls -l $(TGT)/ghost-static
