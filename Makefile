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

.PHONY: setup demo test
setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/rescue-eval run --config configs/demo.yaml --output $(OUT)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider
