# paddock: the two commands a fresh Debian 12 machine (as root) needs are
#   make run    -- host set-up, build, the daemon with ./fleet.toml booting the demo job
#   make test   -- host set-up, build, every test
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: setup image images build lint run test bench fuzz deb clean-state

setup:
	bash scripts/setup-host.sh

image: setup
	@$(MAKE) --no-print-directory images

# The guest images alone (the host set up): mostly package downloads, dpkg and compression.
images:
	bash images/build-guest.sh x86_64
	bash images/build-guest.sh x86_64-warm
	bash images/build-guest.sh aarch64
	bash images/build-guest.sh s390x
	bash images/build-debian.sh

build:
	$(CARGO) build --locked --all-targets

# The build, then clippy's own pass over it (scripts/run-tests.sh checks again, from its cache).
lint: build
	$(CARGO) clippy --all-targets --locked -- -D warnings

run: image
	$(CARGO) build --locked --bin paddock
	./target/debug/paddock check --config fleet.toml
	./target/debug/paddock serve --config fleet.toml --demo

# The images are built beside the build (their downloads and dpkg leave the cores half idle;
# one after the other they took ~215 s + ~365 s of a fresh run), then every test, with clippy
# beside the first tests (scripts/run-tests.sh says why).
test: setup
	@$(MAKE) --no-print-directory -j2 --output-sync=line images build
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
