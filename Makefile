# The two commands: `make up` runs the whole system, `make test` the whole suite.
# Each creates .venv with the Python found on PATH (3.10+) and installs into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test install bench screenshot proto clean

up: $(STAMP)
	$(BIN)/marketdata up $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

install: $(STAMP)

# The quick runs of every benchmark that needs no browser, each printing its figures
# (seconds each; docs/performance.md has the full runs). The fan-out run's JSON goes to $(TMPDIR).
TMPDIR ?= /tmp
bench: $(STAMP)
	$(BIN)/python bench/bench_book.py --quick
	$(BIN)/python bench/bench_sim.py --quick
	$(BIN)/python bench/bench_verify.py --quick
	$(BIN)/python bench/bench_stream.py --runs 1 --seconds 2 --warmup 0.5
	$(BIN)/python bench/bench_ingest.py --rates 1000 --modes on --seconds 2 --warmup 0.5
	$(BIN)/python -m bench.fanout --small --out $(TMPDIR)/marketdata-fanout-small.json
	$(BIN)/python bench/bench_cluster.py --quick

# docs/dashboard.png from the live dashboard (needs a system Chromium).
screenshot: $(STAMP)
	$(BIN)/python -m tests.e2e.screenshot $(ARGS)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10 or newer is needed; set PYTHON=/path/to/python3.x")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. proto/marketdata/v1/market_data.proto

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
