# qwencoder-jax: `make demo` runs the main job on CPU, `make test` runs the test suite.
# Both set up .venv (and the Debian packages in scripts/apt-packages.txt) on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
export XLA_PYTHON_CLIENT_PREALLOCATE ?= false
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup demo test test-slow test-all bench bench-decode bench-data aot-table bench-aot-flags bench-maxtext-aot data-stdlib clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m qwencoder_apps.demo

test: setup
	$(PY) -m pytest -m "not slow" -q

test-slow: setup
	$(PY) -m pytest -m slow -q

test-all: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/model_throughput.py
	$(PY) benchmarks/model_memory.py
	$(PY) benchmarks/sharding_step.py

bench-decode: setup
	$(PY) benchmarks/decode_throughput.py
	$(PY) benchmarks/few_rows_matmul.py

# Every shipped stage x the six presets compiled ahead of time for its TPU slice (docs/tpu_aot.md; hours on 2 cores).
aot-table: setup
	$(PY) benchmarks/aot_table.py --out docs/aot_table.md

# The largest presets on their slices, as shipped and with --libtpu_flags async_collectives (docs/tpu_aot.md).
bench-aot-flags: setup
	$(PY) benchmarks/aot_flags.py --presets 7b,14b,32b

bench-maxtext-aot: setup
	$(PY) benchmarks/maxtext_aot.py

bench-data: setup
	$(PY) benchmarks/dedup_throughput.py
	$(PY) benchmarks/filter_throughput.py --repeat 3

# The data pipeline on the Python standard library (file-level code shards and repo-level shards).
data-stdlib: setup
	$(PY) -m data_pipelines run --source stdlib --output runs/data/stdlib_code
	$(PY) -m data_pipelines run --source stdlib --kind code_repo --output runs/data/stdlib_repos

clean:
	rm -rf $(VENV) .pytest_cache
