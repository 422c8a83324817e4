# Two set-up-from-scratch commands (see README): `make sweep` and `make test`.
# Each creates .venv (Python 3.11; torch 2.14.1 / torchvision 0.29.1) on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: sweep test lint bench clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

sweep: $(STAMP)
	$(PY) -m sweep.run --space alpha_th.yaml $(ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q --timeout=900 $(ARGS)

bench: $(STAMP)
	$(PY) bench/joint_step.py
	$(PY) bench/attacks.py
	$(PY) bench/sweep_overhead.py

clean-venv:
	rm -rf $(VENV)
