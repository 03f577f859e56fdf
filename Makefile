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

# Triton 3.6 (the GPU machine's) beside CI's 3.9: a venv over .venv's packages with only triton replaced, in which
# every kernel's sm_90 compile test and the norm and loss kernels' unit tests (interpreter) run again (~25 s; the
# conv kernels' unit tests pass there too, +55 s: add tests/kernels/test_conv_bn_act.py to run them).
VENV36 := .venv36
STAMP36 := $(VENV36)/.fastpix-installed
TRITON36_TESTS := tests/kernels/test_kernel_compile.py tests/kernels/test_batch_norm_act.py \
	tests/kernels/test_l1_loss.py tests/kernels/test_patchgan_loss.py

$(STAMP36): $(STAMP)
	test -x $(VENV36)/bin/python || $(PYTHON) -m venv --system-site-packages $(VENV36)
	echo "import site; site.addsitedir('$$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")')" \
		> "$$($(VENV36)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/fastpix-venv.pth"
	$(VENV36)/bin/python -m pip install --quiet --no-deps "triton==3.6.0"
	$(VENV36)/bin/python -c "import triton, fastpix; assert triton.__version__ == '3.6.0', triton.__version__"
	touch $(STAMP36)

test: $(STAMP) $(STAMP36)
	$(PY) -m pytest -q tests
	$(VENV36)/bin/python -m pytest -q -p no:cacheprovider $(TRITON36_TESTS)

bench: $(STAMP)
	$(PY) -m fastpix bench

# The GPU proof in one short window (bench/gpu_check.py; docs/benchmarks.md "GPU check"). On the bare GPU machine it uses the
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

# The browser tests (tests/test_study_browser.py, tests/test_draw_browser.py) need Debian's chromium and chromium-driver: say how to get them.
.PHONY: check-browser
test: check-browser
check-browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || echo "make test: /usr/bin/chromium or \
	/usr/bin/chromedriver is missing, so the browser tests will skip; install them with: \
	sudo apt-get update && sudo apt-get install -y chromium chromium-driver"
