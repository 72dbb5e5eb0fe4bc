# latentq: `make run` serves the whole stack locally; `make test` runs the test suite.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
STATE ?= .run
# torch is installed on its own, pinned, before the project: a bare `torch` requirement can pull a
# multi-GB CUDA build. On a GPU host use e.g. TORCH_SPEC=torch==2.13.0 and
# TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128" (see README).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# The invisible watermark's library, without its desktop-OpenCV requirement (see pyproject.toml).
WATERMARK_SPEC ?= invisible-watermark==0.2.0
STAMP := $(VENV)/.installed

.PHONY: install run model test test-unit lint format redis-server chromium clean

install: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(PY) -m pip install -q -e ".[worker,dev]"
	$(PY) -m pip install -q --no-deps "$(WATERMARK_SPEC)"
	$(PY) -m pip install -q -e clients/python
	@touch $@

# redis-server is a Debian package, not a Python one: installed here when run as root.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || [ -n "$$LATENTQ_REDIS_URL" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing redis-server (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "redis-server is missing: run 'sudo apt-get install redis-server' or set LATENTQ_REDIS_URL"; exit 1; \
	  fi; }

# The playground's browser tests (tests/e2e/test_playground.py) drive Debian's chromium through
# Playwright (whose own browser download is not used): installed here when run as root.
chromium:
	@command -v chromium >/dev/null 2>&1 || [ -n "$$LATENTQ_CHROMIUM" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "chromium is missing: run 'sudo apt-get install chromium' (or LATENTQ_CHROMIUM=<a chromium>)"; exit 1; \
	  fi; }

EMBEDDED := tiny-sd tiny-sdxl tiny-sd-inpainting tiny-x4-upscaler tiny-sd3 tiny-flux tiny-sd-controlnet tiny-sdxl-controlnet \
            tiny-safety-all tiny-safety-none

model: $(foreach name,$(EMBEDDED),$(STATE)/models/$(name)/model_index.json)

$(STATE)/models/%/model_index.json: | $(STAMP)
	$(PY) -m worker.embedded $(STATE)/models/$* --name $*

# The embedded LoRA adapters ([[loras]] of latentq/models.toml), built up front like the models.
EMBEDDED_LORAS := tiny-sd-lora tiny-sdxl-lora

model: $(foreach name,$(EMBEDDED_LORAS),$(STATE)/models/$(name)/pytorch_lora_weights.safetensors)

$(STATE)/models/%/pytorch_lora_weights.safetensors: | $(STAMP)
	$(PY) -m worker.embedded.loras $(STATE)/models/$* --name $*

# The embedded models are built up front (a worker would build them on first start anyway).
run: install redis-server model
	PORT=$(PORT) $(PY) -m latentq_dev.devrun --state $(STATE)

test: install redis-server chromium
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest tests/unit

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(STATE) .pytest_cache .mypy_cache .ruff_cache
