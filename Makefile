# The README's two commands: `make demo` and `make test`. Both set up .venv on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: setup client-deps client demo test lint bench gpu-bundle lock clean

# Exact versions of every package (torch excepted: TORCH_VERSION and the image's index pick it).
CONSTRAINTS := constraints.txt
UNPINNED := ^(\#|torch[a-z]*==|triton==|nvidia-|serverless-talking-head==)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(PY)
	# CPU torch first: a bare `torch` requirement would pull several GB of CUDA wheels.
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	touch $@ $(VENV)/.demo-installed

# What `make demo` runs, and only that: the project with its orchestrator and realtime extras (no torch, no test
# tools), with pip's progress shown. `make setup` (the dev set) includes it.
$(VENV)/.demo-installed: pyproject.toml $(CONSTRAINTS) | $(PY)
	@echo "make demo: installing the demo's packages into $(VENV) (the project, its orchestrator and realtime extras)"
	$(PY) -m pip install --progress-bar on -c $(CONSTRAINTS) -e ".[orchestrator,realtime]"
	touch $@

# The TypeScript client's npm packages (clients/typescript), when npm is installed.
CLIENT_DIR := clients/typescript

$(CLIENT_DIR)/node_modules/.package-lock.json: $(CLIENT_DIR)/package.json $(CLIENT_DIR)/package-lock.json
	cd $(CLIENT_DIR) && npm ci --no-audit --no-fund

client-deps:
	@if ! command -v npm >/dev/null 2>&1; then echo "npm not found: the TypeScript client's tests will be skipped"; \
	elif ! $(MAKE) --no-print-directory $(CLIENT_DIR)/node_modules/.package-lock.json; then \
	echo "npm ci failed (offline?): the TypeScript client's tests will be skipped"; fi

setup: $(VENV)/.installed client-deps

# Regenerate the TypeScript client's OpenAPI document (from the FastAPI app, no server) and its types.
client: setup
	PYTHONPATH=. $(PY) $(CLIENT_DIR)/scripts/export_openapi.py > $(CLIENT_DIR)/openapi.json
	cd $(CLIENT_DIR) && npm run --silent generate

# State goes to AVATARCTL_HOME (default ~/.local/share/avatarctl); the demo prints the commands that go on from it.
demo: $(VENV)/.demo-installed
	$(VENV)/bin/avatarctl demo

test: setup
	@command -v node >/dev/null 2>&1 || echo "node not found: the TypeScript client's tests are skipped"
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) bench/preprocess.py
	$(PY) bench/generate.py
	$(PY) bench/realtime.py
	$(PY) bench/emotion.py
	$(PY) bench/wav2lip.py
	$(PY) bench/liveportrait.py --size 128 --frames 2
	$(PY) bench/musetalk.py
	$(PY) bench/coldstart.py
	$(PY) bench/cli_still.py
	$(PY) bench/orchestrator.py
	$(PY) bench/faults.py
	$(PY) bench/hostile.py
	$(PY) bench/avatar_cache.py

# What a lent GPU machine without network lacks for bench/gpu.sh (wheels for its Python 3.12, the recorded face
# analysis), in one folder of at most 60 MiB: copy it beside the checkout there and run bench/gpu.sh OUT_DIR.
gpu-bundle: setup
	PYTHONPATH=. $(PY) -m bench.gpu.bundle var/gpu-bundle

# Refresh constraints.txt from the packages installed in .venv (after changing pyproject.toml).
lock: setup
	{ echo "# Exact versions for images and CI (pip install -c constraints.txt). Refresh: make lock"; \
	  $(PY) -m pip freeze --exclude-editable | grep -vE '$(UNPINNED)'; } > $(CONSTRAINTS)

clean:
	rm -rf $(VENV) var .pytest_cache $(CLIENT_DIR)/node_modules $(CLIENT_DIR)/dist
