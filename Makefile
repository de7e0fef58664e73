# `make demo`: set up and run the demo evaluation.  `make test`: set up and run the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/demo

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch and torchvision pinned: these builds are on this kind of machine's disk (reference.md)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# The oldest library versions the harness supports (vLLM 0.33's transformers floor), laid over
# the venv's newer ones for one run of the unit tier: `make test-oldest`.
OLDEST := transformers==5.16.1 "huggingface-hub>=1.5,<2" "tokenizers>=0.23.1,<0.24"
OLDEST_DIR := .cache/oldest

.PHONY: setup demo test test-oldest
setup: $(VENV)/.installed

# the demo world's held-out scenes with the trained demo twins (configs/world.yaml)
demo: setup
	$(VENV)/bin/rescue-eval run --config configs/world.yaml --output $(OUT)

# The in-process and command-line tiers on two workers, a test file each at a time (their
# subprocesses use one core each), then the multi-rank tiers alone (their ranks use every core).
PYTEST := $(PY) -m pytest -q -p no:cacheprovider
PARALLEL := -n 2 --dist loadfile

test: setup
	$(PYTEST) $(PARALLEL) -m "unit or cli"
	$(PYTEST) -m "not unit and not cli"

test-oldest: setup
	$(PY) -m pip install -q --no-deps --upgrade --target $(OLDEST_DIR) $(OLDEST)
	PYTHONPATH=$(OLDEST_DIR) $(PYTEST) $(PARALLEL) -m unit
