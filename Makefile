# mvlift: `make demo` and `make test` work on a fresh machine (CPU).
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
DEMO_OUT ?= demo_out

.PHONY: venv demo test lint clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# torch first: the small local CPU wheel, so nothing pulls a multi-GB CUDA build
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(VPY) -m pytest -q tests

lint: venv
	$(VPY) -m ruff check .

demo: venv
	DEMO_OUT=$(DEMO_OUT) PY=$(VPY) bash tools/demo.sh

clean:
	rm -rf $(VENV) $(DEMO_OUT) runs
