# d2ltvm: the two commands of README.md, and the tools behind them.
#   make html   render the book into _build/html (sets up .venv when needed)
#   make test   package sync check, unit tests and nbval over every chapter, then nbval again as
#               a machine of another CPU class would run it (test-foreign-cpu)
# Everything runs in the virtual environment .venv, built from requirements.txt.

PYTHON ?= python3
VENV   ?= .venv
# The Pythons the pins of requirements.txt are made for (CI runs the default, python3).
SUPPORTED_PYTHONS := 3.11 3.12 3.13
PYTHON312 ?= python3.12
PYTHON313 ?= python3.13
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JOBS   ?= 2
# The switch that keeps every chapter off the network (see README.md, "Offline and online").
export D2LTVM_OFFLINE ?= 1
export PYTHONHASHSEED := 0

# A machine of another class: PyTorch and oneDNN held to their plain kernels, TVM compiling for
# an x86-64 CPU without AVX (any x86-64 machine runs that code). Stored outputs must not change.
# TorchInductor's kernel cache does not tell the two apart (kernels cached by a run with vector
# kernels fail to compile without them), so this run keeps a cache of its own.
FOREIGN_INDUCTOR_CACHE := $(CURDIR)/_build/inductor-foreign-cpu
FOREIGN_CPU := ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 \
	D2LTVM_TARGET='{"kind": "llvm", "mcpu": "x86-64-v2"}' \
	TORCHINDUCTOR_CACHE_DIR=$(FOREIGN_INDUCTOR_CACHE)

.PHONY: html test test-native test-foreign-cpu test-browser test-pythons python-check venv package outputs clean

venv: $(STAMP)

# Refuses, naming the supported versions, a Python outside them, and a $(VENV) made by another.
python-check:
	@$(PYTHON) tools/check_python.py $(VENV) $(SUPPORTED_PYTHONS)

$(STAMP): requirements.txt pyproject.toml | python-check
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

html: $(STAMP) | python-check
	$(BIN)/jupyter-book build -W --keep-going .
	@echo "The book is at $(CURDIR)/_build/html/index.html"

test: test-native test-foreign-cpu

test-native: $(STAMP) | python-check
	$(BIN)/python tools/sync_package.py --check
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile tests chapters

# The rendered book in headless Chromium (also part of test-native): console errors, images,
# internal links, math, search, code that fits its column. Needs Debian's chromium and
# chromium-driver; skips (and says why) without them, unless D2LTVM_REQUIRE_BROWSER=1.
test-browser: $(STAMP) | python-check
	$(BIN)/python -m pytest -n 0 tests/test_browser.py

test-foreign-cpu: $(STAMP) | python-check
	@if [ "$$(uname -m)" = x86_64 ]; then \
	  echo "nbval over every chapter as on another CPU: $(FOREIGN_CPU)"; \
	  rm -rf $(FOREIGN_INDUCTOR_CACHE); \
	  $(FOREIGN_CPU) $(BIN)/python -m pytest -n $(JOBS) --dist loadfile chapters; \
	else echo "test-foreign-cpu: skipped, it plays an x86-64 machine and this one is $$(uname -m)"; fi

# For maintainers: the whole test command with each other supported Python, each in a virtual
# environment of its own (.venv-3.12, .venv-3.13). PYTHON312=/path/to/python3.12 (and PYTHON313)
# name the interpreters where they are not on PATH under these names (e.g. pyenv versions).
test-pythons:
	$(MAKE) test PYTHON=$(PYTHON312) VENV=.venv-3.12
	$(MAKE) test PYTHON=$(PYTHON313) VENV=.venv-3.13

# Regenerate d2ltvm/__init__.py from the '# Save to the d2ltvm package' cells.
package: $(STAMP) | python-check
	$(BIN)/python tools/sync_package.py

# Re-execute notebooks top to bottom and store their outputs (offline, as CI runs them).
# make outputs                       every chapter
# make outputs NB=chapters/x/y.ipynb one chapter
outputs: $(STAMP) | python-check
	$(BIN)/python tools/sync_package.py
	$(BIN)/python tools/execute_notebooks.py $(NB)
	$(BIN)/python tools/sync_package.py

clean:
	rm -rf _build
