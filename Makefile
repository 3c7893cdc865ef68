# paddock: the two commands a fresh Debian 12 machine (as root) needs are
#   make run    -- host set-up, build, the daemon with ./fleet.toml booting the demo job
#   make test   -- host set-up, build, every test
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: setup image build run test bench fuzz deb clean-state

setup:
	bash scripts/setup-host.sh

image: setup
	bash images/build-guest.sh x86_64
	bash images/build-guest.sh x86_64-warm
	bash images/build-guest.sh aarch64
	bash images/build-guest.sh s390x
	bash images/build-debian.sh

build:
	$(CARGO) build --locked --all-targets

run: image
	$(CARGO) build --locked --bin paddock
	./target/debug/paddock check --config fleet.toml
	./target/debug/paddock serve --config fleet.toml --demo

test: image build
	bash scripts/run-tests.sh

bench: image
	bash bench/run.sh

# The Debian package of the release binary: target/deb/paddock_VERSION_ARCH.deb
# (what it ships and why: packaging/ and ARCHITECTURE.md).
deb:
	$(CARGO) build --locked --release --bin paddock
	bash scripts/build-deb.sh target/release/paddock target/deb

# Each fuzz target for FUZZ_SECONDS (60) on the stable toolchain; see fuzz/README.md.
FUZZ_SECONDS ?= 60
fuzz:
	bash fuzz/run.sh $(FUZZ_SECONDS)
