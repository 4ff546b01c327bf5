# The README's two commands: `make demo` and `make test`. Both install first when needed.
PY := .venv/bin/python
PYTEST_ARGS ?=
MONITOR_ARGS ?=

.PHONY: install install-system demo test test-fast bench monitor clean

install:
	@bash scripts/install.sh

# Debian packages the tests use (a real Prometheus server, kubectl for kustomize).
install-system:
	@bash scripts/install-system.sh

# Uses the GLUE SST-2 files in ../shared when present; otherwise the hub, else a synthetic set.
DEMO_DATA := $(if $(wildcard ../shared/data/sst2/dev.tsv),--data ../shared/data/sst2,)

demo: install
	$(PY) -m mpcformer.jobs.demo $(DEMO_DATA)

test: install install-system
	$(PY) -m pytest $(PYTEST_ARGS)

# The edit loop: every test not marked slow (tests/conftest.py, SLOW_MODULES), about two minutes.
test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The shipped benchmark, jobs/configs/bench.yaml: BERT-base at length 128, four combinations.
bench: install
	$(PY) -m mpcformer.jobs.bench --config bench

# e.g. make monitor MONITOR_ARGS="--ray-temp-dir /tmp/my-ray --port 0"
monitor: install
	$(PY) -m mpcformer.jobs.monitor $(MONITOR_ARGS)

clean:
	rm -rf .venv runs .pytest_cache
