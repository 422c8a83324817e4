# Two set-up-from-scratch commands (see README): `make sweep` and `make test`.
# Each creates .venv (Python 3.11; torch 2.14.1 / torchvision 0.29.1) on first use and
# installs exactly the versions of requirements.lock, the ones the tests passed with.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
PIP := -m pip install --quiet --disable-pip-version-check
# The lock is made by pip-tools (pip-compile); only `make lock` installs it.
PIP_TOOLS := pip-tools==7.6.2
COMPILE_FLAGS := --extra test --strip-extras --no-emit-find-links --no-emit-index-url --no-emit-trusted-host
# `make test-latest`: the newest releases pyproject.toml's ranges allow, in a venv of its own.
LATEST ?= .venv-latest

.PHONY: sweep test lint lock test-latest gpu-check bench repro-mnist repro-cifar10 investigate-mnist investigate-cifar10 clean-venv

# Real data for the reproductions: MNIST/ and cifar10-jpg.tar.gz (see ../shared/data/README.md).
DATA_ROOT ?= $(or $(NEUROREG_DATA_ROOT),../shared/data)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) $(PIP) -r $(LOCK)
	$(PY) $(PIP) --no-deps -e .
	$(PY) -m neuroreg.provenance --check-lock
	touch $(STAMP)

sweep: $(STAMP)
	$(PY) -m sweep.run --space alpha_th.yaml $(ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q --timeout=900 $(ARGS)

# Regenerate requirements.lock from pyproject.toml, keeping every pin that still fits.
# One package newer: make lock ARGS="--upgrade-package optuna"; all of them: make lock ARGS=--upgrade
# Then `make test`, and commit the lock change on its own.
lock: $(STAMP)
	$(PY) $(PIP) $(PIP_TOOLS)
	$(PY) -m piptools compile --quiet $(COMPILE_FLAGS) --output-file $(LOCK) $(ARGS) pyproject.toml

# The whole suite on the newest allowed releases (not part of .ci/run): the next drift of a
# dependency shows up here as a failing test, with the versions that differ from the lock.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python $(PIP) --upgrade --upgrade-strategy eager -e '.[test]'
	$(LATEST)/bin/python -m neuroreg.provenance --diff-lock
	$(LATEST)/bin/ruff check .
	NEUROREG_TEST_LATEST=1 $(LATEST)/bin/python -m pytest -q --timeout=900 $(ARGS)

# Issue 25: everything that needs a CUDA GPU, in one table (exit 2 where there is none).
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py

bench: $(STAMP)
	$(PY) bench/train_throughput.py
	$(PY) bench/attacks.py
	$(PY) bench/sweep_overhead.py

# Issue 7: the papers' headline comparison on CPU, from scratch; report into docs/results/.
# $(call sweep_report,SPACE,OUT): run search_spaces/SPACE.yaml on the real data, then report it.
define sweep_report
	$(PY) -m sweep.run --space $(1).yaml --data-root $(DATA_ROOT) --name $(1)-$$(date +%Y%m%d-%H%M%S)
	$(PY) -m analysis.report $(1) --out docs/results/$(2)
endef

repro-mnist: $(STAMP)
	$(call sweep_report,mnist_repro,mnist)

repro-cifar10: $(STAMP)
	$(call sweep_report,cifar10_repro,cifar10)

# Why the MNIST effect is weak: loss convention x layer set (search_spaces/mnist_investigate.yaml).
investigate-mnist: $(STAMP)
	$(call sweep_report,mnist_investigate,mnist_investigate)

# The MNIST finding (MSE on conv1+conv5) on grayscale CIFAR-10 (search_spaces/cifar10_investigate.yaml).
investigate-cifar10: $(STAMP)
	$(call sweep_report,cifar10_investigate,cifar10_investigate)

clean-venv:
	rm -rf $(VENV) $(LATEST)
