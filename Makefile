# Two entry points: `make demo` and `make test`. Both set up what they need first.
PY := .venv/bin/python
REGIDX := .venv/bin/regidx
DEMO := demo

.PHONY: setup demo test bench clean

setup:
	@tools/setup.sh

demo: setup
	@tools/demo.sh

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) tools/bench_gc.py --regidx-cmd $(REGIDX)

clean:
	rm -rf $(DEMO) .venv .pytest_cache .hypothesis
