# Two commands do all the set-up on a fresh machine (see README.md):
#   make quickstart   # install, then run recipes/quickstart.yaml on the embedded default model
#   make test         # install, then run the test suite (what CI runs)
# Both create .venv/ on first use. Where there is no NVIDIA GPU, the CPU build of torch is installed
# first, so that the torch range in pyproject.toml does not pull a multi-GB CUDA build.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.ntp-rl-installed

.PHONY: setup quickstart test smoke lint

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing torch==$(TORCH_VERSION) (CUDA build)"; \
		$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"; \
	else \
		echo "no GPU: installing the CPU build of torch==$(TORCH_VERSION)"; \
		$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)+cpu" 2>/dev/null || \
		$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)" --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

quickstart: setup
	$(VENV)/bin/ntp-rl train recipes/quickstart.yaml

smoke: setup
	$(VENV)/bin/ntp-rl train recipes/quickstart.yaml --smoke

test: setup
	$(PY) -m pytest -q

lint: setup   # style, then the import-layer contracts of pyproject.toml (also part of `make test`)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(PY) -m pytest -q tests/test_layers.py
