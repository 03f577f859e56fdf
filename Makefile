# Two commands for a newcomer: `make demo` and `make test`. Each creates .venv if needed and installs fastpix.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fastpix-installed
DEMO_DIR ?= demo_out
# torch 2.13.0's CPU wheel where there is no CUDA; on a CUDA machine, the torch already there (or pip's choice).
TORCH_PIN := $(shell command -v nvidia-smi >/dev/null 2>&1 || echo "torch==2.13.0")

.PHONY: install demo test bench gpu-check clean

install: $(STAMP)

$(STAMP): setup.py pyproject.toml $(wildcard csrc/*.cpp)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN) "triton==3.9.0"
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m fastpix info
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m fastpix demo --out $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) -m fastpix bench

# The GPU proof in one short window (bench/gpu_check.py; README "GPU check"). On the bare GPU machine it uses the
# python3 there (torch and triton preinstalled) and installs fastpix with --no-deps; DRY=1 runs every stage on this
# machine's CPU at tiny shapes, in .venv. OUT defaults to bench/results/<date>_<gpu>_<rev>/.
GPU_PYTHON ?= python3
gpu-check:
ifdef DRY
	$(MAKE) $(STAMP)
	$(PY) bench/gpu_check.py --dry $(if $(OUT),--out "$(OUT)")
else
	$(GPU_PYTHON) bench/gpu_check.py $(if $(OUT),--out "$(OUT)")
endif

clean:
	rm -rf $(VENV) build *.egg-info $(DEMO_DIR)
