# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv when it is missing.
# The torch pin for this machine kind lives in constraints.txt (CPU build); pyproject.toml leaves torch open.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := runs/demo

.PHONY: demo test bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	# curvlinops (the curvature tests' cross-check) without its backpack -> torchvision chain: PyPI's
	# torchvision does not load beside the CPU torch
	$(PY) -m pip install --quiet --no-deps -c constraints.txt curvlinops-for-pytorch==3.0.1 einops einconv opt-einsum linear_operator
	touch $(STAMP)

test: $(STAMP)
	MODESCAPE_PROGRESS=0 $(PY) -m pytest -q -n 2 --dist loadgroup

demo: $(STAMP)
	$(VENV)/bin/modescape train --model mlp --data digits --epochs 20 --seed 0 --out $(DEMO)
	$(VENV)/bin/modescape eval $(DEMO)/final.safetensors $(DEMO)/checkpoints/epoch-000.safetensors
	$(VENV)/bin/modescape interpolate $(DEMO)/checkpoints/epoch-000.safetensors $(DEMO)/final.safetensors \
		--steps 41 --range -0.25:1.25 --out $(DEMO)/interpolate
	$(VENV)/bin/modescape surface $(DEMO)/final.safetensors --x -1:1:51 --y -1:1:51 --norm filter \
		--ignore biasbn --out $(DEMO)/surface
	@echo "demo output: $(abspath $(DEMO)) (checkpoints/, interpolate/, surface/landscape.html)"

bench: $(STAMP)
	$(PY) bench/evaluate.py

clean:
	rm -rf $(VENV) runs
