# The README's two commands: `make demo` and `make test`. Both set up .venv on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: setup demo test lint bench lock clean

# Exact versions of every package (torch excepted: TORCH_VERSION and the image's index pick it).
CONSTRAINTS := constraints.txt
UNPINNED := ^(\#|torch[a-z]*==|triton==|nvidia-|serverless-talking-head==)

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first: a bare `torch` requirement would pull several GB of CUDA wheels.
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/avatarctl demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) bench/preprocess.py
	$(PY) bench/generate.py
	$(PY) bench/emotion.py
	$(PY) bench/wav2lip.py
	$(PY) bench/coldstart.py
	$(PY) bench/orchestrator.py

# Refresh constraints.txt from the packages installed in .venv (after changing pyproject.toml).
lock: setup
	{ echo "# Exact versions for images and CI (pip install -c constraints.txt). Refresh: make lock"; \
	  $(PY) -m pip freeze --exclude-editable | grep -vE '$(UNPINNED)'; } > $(CONSTRAINTS)

clean:
	rm -rf $(VENV) var .pytest_cache
