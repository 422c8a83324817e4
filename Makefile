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
	$(PY) bench/joint_step.py
	$(PY) bench/attacks.py
	$(PY) bench/sweep_overhead.py

# Issue 7: the papers' headline comparison on CPU, from scratch; report into docs/results/.
repro-mnist: $(STAMP)
	$(PY) -m sweep.run --space mnist_repro.yaml --data-root $(DATA_ROOT) --name mnist_repro-$$(date +%Y%m%d-%H%M%S)
	$(PY) -m analysis.report mnist_repro --out docs/results/mnist

repro-cifar10: $(STAMP)
	$(PY) -m sweep.run --space cifar10_repro.yaml --data-root $(DATA_ROOT) --name cifar10_repro-$$(date +%Y%m%d-%H%M%S)
	$(PY) -m analysis.report cifar10_repro --out docs/results/cifar10

# Why the MNIST effect is weak: loss convention x layer set (search_spaces/mnist_investigate.yaml).
investigate-mnist: $(STAMP)
	$(PY) -m sweep.run --space mnist_investigate.yaml --data-root $(DATA_ROOT) --name mnist_investigate-$$(date +%Y%m%d-%H%M%S)
	$(PY) -m analysis.report mnist_investigate --out docs/results/mnist_investigate

# The MNIST finding (MSE on conv1+conv5) on grayscale CIFAR-10 (search_spaces/cifar10_investigate.yaml).
investigate-cifar10: $(STAMP)
	$(PY) -m sweep.run --space cifar10_investigate.yaml --data-root $(DATA_ROOT) --name cifar10_investigate-$$(date +%Y%m%d-%H%M%S)
	$(PY) -m analysis.report cifar10_investigate --out docs/results/cifar10_investigate

clean-venv:
	rm -rf $(VENV)
