# Glimpse developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.glimpse-installed
PYTEST_ARGS ?=

.PHONY: install lint test test-fast dev demo smoke bench-index bench-encoder bench-search bench-ingest bench-faiss openapi clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	touch $@

install: $(STAMP)

# What running needs, without the test stack. Without an NVIDIA GPU, torch comes from PyTorch's
# CPU wheel index where it is reachable (PyPI's default torch carries the CUDA libraries).
RUN_STAMP := $(VENV)/.glimpse-run
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip setuptools wheel
	if ! command -v nvidia-smi >/dev/null 2>&1 && $(BIN)/python -c "import urllib.request as u; \
		u.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=5)" 2>/dev/null; then \
		$(BIN)/python -m pip install -q --index-url $(TORCH_CPU_INDEX) torch torchvision; fi
	$(BIN)/python -m pip install -q -e '.[encoder,index,gateway,scripts]'
	touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# The whole suite, slow and browser tests included. Installs what it needs (the venv, and
# Debian's chromium for the browser tests when it is missing and we may install it).
test: install
	bash ci/ensure_test_deps.sh
	$(MAKE) lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Everything but the slow and browser tests, for a quick loop while editing.
test-fast: install
	$(BIN)/python -m pytest -m "not slow and not browser and not docker" $(PYTEST_ARGS)

# The three services locally, without Docker (Ctrl-C stops them).
dev: $(RUN_STAMP)
	$(BIN)/glimpse dev $(DEV_ARGS)

# Ingest the sample photos that scikit-image and scikit-learn ship into a running `make dev`.
demo: $(RUN_STAMP)
	$(BIN)/python -m pip install -q -e '.[demo]'
	$(BIN)/glimpse demo

smoke:
	bash ci/compose_smoke.sh

bench-index: install
	$(BIN)/python bench/bench_index.py

bench-encoder: install
	$(BIN)/python bench/bench_encoder.py

bench-search: install
	$(BIN)/python bench/bench_search.py

bench-ingest: install
	$(BIN)/python bench/bench_ingest.py

bench-faiss: install
	$(BIN)/python bench/bench_faiss.py compare --quick

# Rewrite the committed OpenAPI documents after an intended API change.
openapi: install
	$(BIN)/python ci/export_openapi.py

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build *.egg-info
