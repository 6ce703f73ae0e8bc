# qwencoder-jax: `make demo` runs the main job on CPU, `make test` runs the test suite.
# Both set up .venv (and the Debian packages in scripts/apt-packages.txt) on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
export XLA_PYTHON_CLIENT_PREALLOCATE ?= false
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup demo test test-slow test-all bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m qwencoder_jax.demo

test: setup
	$(PY) -m pytest -m "not slow" -q

test-slow: setup
	$(PY) -m pytest -m slow -q

test-all: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/model_throughput.py
	$(PY) benchmarks/model_memory.py

clean:
	rm -rf $(VENV) .pytest_cache
