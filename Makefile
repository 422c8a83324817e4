# Two set-up-from-scratch commands (see README): `make sweep` and `make test`.
# Each creates .venv (Python 3.11; torch 2.14.1 / torchvision 0.29.1) on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: sweep test lint bench repro-mnist repro-cifar10 investigate-mnist investigate-cifar10 clean-venv

# Real data for the reproductions: MNIST/ and cifar10-jpg.tar.gz (see ../shared/data/README.md).
DATA_ROOT ?= $(or $(NEUROREG_DATA_ROOT),../shared/data)

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
	rm -rf $(VENV)
