# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv when it is missing.
# The torch pin for this machine kind lives in constraints.txt (CPU build); pyproject.toml leaves torch open.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := runs/tour

.PHONY: demo test lint docs dist bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,dev]"
	# curvlinops (the curvature tests' cross-check) without its backpack -> torchvision chain: PyPI's
	# torchvision does not load beside the CPU torch
	$(PY) -m pip install --quiet --no-deps -c constraints.txt curvlinops-for-pytorch==3.0.1 einops einconv opt-einsum linear_operator
	touch $(STAMP)

test: $(STAMP)
	MODESCAPE_PROGRESS=0 $(PY) -m pytest -q -n 2 --dist loadgroup

# lint and types: ruff (rules in pyproject.toml), the formatter's check, mypy over src/ (strictness in pyproject.toml)
LINT_PATHS := src tests bench
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy

# the API reference site (mkdocs.yml): a broken link or a missing reference fails the build
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# sdist and wheel in dist/, checked by twine
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --no-isolation --outdir dist
	$(VENV)/bin/twine check --strict dist/*

demo: $(STAMP)
	$(VENV)/bin/modescape tour --out $(DEMO)
	@echo "demo report: open $(abspath $(DEMO))/report/index.html"

bench: $(STAMP)
	$(PY) bench/evaluate.py

clean:
	rm -rf $(VENV) runs site dist .mypy_cache .ruff_cache
