# The README's two commands: `make demo` and `make test`. Both install first when needed.
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test bench monitor clean

install:
	@bash scripts/install.sh

demo: install
	$(PY) -m mpcformer.jobs.demo

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) -m mpcformer.jobs.bench --model bert-base --seq-len 128 --approx exact,quad+2quad,quad+2relu,relu+softmax --out runs/bench

monitor: install
	$(PY) -m mpcformer.jobs.monitor

clean:
	rm -rf .venv runs .pytest_cache
