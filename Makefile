# Set-up and checks in one command each, on a fresh machine (Debian/Ubuntu with Rust and
# Python 3.10+):
#   make demo   install, then genesis-registry demo: a local etcd, three gRPC servers, a
#               balanced client while servers come and go; stops everything
#   make test   install, check formatting/lints/types, run the Rust unit tests, the whole
#               pytest suite on a real etcd, and a smoke run of the benchmarks
# Compiled Rust dependencies are kept outside the clone, so later runs are quick.

PYTHON ?= python3
VENV ?= .venv
export CARGO_TARGET_DIR ?= $(HOME)/.cache/genesis-registry/target
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install rust-test py-test bench bench-smoke lint console-screenshots clean

demo: install
	$(VENV)/bin/genesis-registry demo

test: install lint rust-test py-test bench-smoke

install: $(STAMP)

# etcd-client's build script needs protoc.
$(STAMP): pyproject.toml Cargo.toml Cargo.lock $(shell find rust python -name '*.rs' -o -name '*.py' -o -name '*.pyi' 2>/dev/null)
	@command -v protoc >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq protobuf-compiler >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq protobuf-compiler >/dev/null)); \
	  else echo "protoc is missing: install protobuf-compiler (sudo apt-get install protobuf-compiler)"; exit 1; fi; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "maturin>=1.9.4,<2"
	$(VENV)/bin/maturin develop --release --extras test,bench,dev,console -q
	touch $(STAMP)

# Formatting, lints and types, Rust and Python.
lint: install
	cargo fmt --all --check
	cargo clippy --all-targets -p genesis-registry-core -p genesis-registry -- -D warnings
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest genesis_registry._core

rust-test:
	cargo test --release -p genesis-registry-core

py-test: install
	$(PY) -m pytest -q

# The comparison with other clients, gRPC at scale and the restart herd (about 50 minutes); tables land in
# benches/results/, charts in benches/charts/
bench: install
	$(PY) benches/run.py
	$(PY) -m pytest benches/test_micro.py -q --benchmark-only

# Tiny sizes, to prove the benchmarks still run (part of `make test`).
bench-smoke: install
	$(PY) benches/run.py --quick
	$(PY) -m pytest benches/test_micro.py -q --benchmark-disable

# The console's screenshots in the README (needs chromium: apt-get install chromium).
console-screenshots: install
	cd tests && ../$(PY) -m support.console_screenshots ../docs/console

clean:
	rm -rf $(VENV)
