# Two commands for a newcomer: `make demo` and `make test`. Each creates .venv if needed and installs fastpix.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fastpix-installed
DEMO_DIR ?= demo_out
# torch 2.13.0's CPU wheel where there is no CUDA; on a CUDA machine, the torch already there (or pip's choice).
TORCH_PIN := $(shell command -v nvidia-smi >/dev/null 2>&1 || echo "torch==2.13.0")

.PHONY: install demo test bench clean

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

clean:
	rm -rf $(VENV) build *.egg-info $(DEMO_DIR)

# The browser tests (tests/test_study_browser.py) need Debian's chromium and chromium-driver: say how to get them.
.PHONY: check-browser
test: check-browser
check-browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || echo "make test: /usr/bin/chromium or \
	/usr/bin/chromedriver is missing, so the browser tests will skip; install them with: \
	sudo apt-get update && sudo apt-get install -y chromium chromium-driver"
