# Two commands for a new user (see README.md):
#   make quickstart   set everything up, then run the main job on the embedded default
#   make test         set everything up, then run every test suite (unit, integration, slow)
# Everything installs from constraints.txt, the lock of tested versions (`make lock` renews it).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := constraints.txt
LATEST := .venv-latest
# pip itself is pinned (a new pip can change resolution); torch 2.13.0 is the CPU wheel (a looser spec
# can pull a multi-GB CUDA build).
PIP    := pip==26.3
TORCH  := torch==2.13.0
# the checkov release `make lock` records (checkov's own dependencies are not locked)
CHECKOV_VERSION := 3.3.30

.PHONY: setup quickstart test unit lint bench clean lock test-latest

# $(1): the venv; $(2): extra pip arguments (the lock, or nothing for the newest allowed versions)
define install
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q $(PIP)
	$(1)/bin/python -m pip install -q $(TORCH) $(2)
	$(1)/bin/python -m pip install -q -e ".[dev]" $(2)
endef

$(STAMP): pyproject.toml $(LOCK)
	$(call install,$(VENV),-c $(LOCK))
	touch $(STAMP)

# checkov (the infra/ tests run it) lives in a venv of its own: in .venv it would pull boto3 far back.
CHECKOV := $(VENV)/checkov/bin/checkov
$(CHECKOV): $(LOCK)
	test -x $(VENV)/checkov/bin/python || $(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/python -m pip install -q $(PIP)
	$(VENV)/checkov/bin/python -m pip install -q checkov==$$(sed -n 's/^# checkov==\([^ ]*\).*/\1/p' $(LOCK))
	touch $(CHECKOV)

# Debian's Chromium and its driver, for the headless-browser test of report.html
# (tests/orchestration/report/test_report_browser.py): installed from the system's packages when missing, as
# root or with passwordless sudo; otherwise a message and no failure (the test then fails under CI=true and is
# skipped elsewhere).
CHROMIUM := /usr/bin/chromium
CHROMEDRIVER := /usr/bin/chromedriver
BROWSER_PKGS := chromium chromium-driver

setup: $(STAMP) $(CHECKOV)
	@if [ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ]; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make setup: $(CHROMIUM) or $(CHROMEDRIVER) missing and no apt-get: install Chromium and its driver for the report's browser test"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(BROWSER_PKGS); } \
	    || echo "make setup: apt-get install $(BROWSER_PKGS) failed (not fatal; the report's browser test needs them)"; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	  { sudo -n apt-get update -q && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(BROWSER_PKGS); } \
	    || echo "make setup: sudo apt-get install $(BROWSER_PKGS) failed (not fatal; the report's browser test needs them)"; \
	else \
	  echo "make setup: $(CHROMIUM) missing and not root (no passwordless sudo): run 'sudo apt-get install $(BROWSER_PKGS)' for the report's browser test"; \
	fi

quickstart: setup
	$(BIN)/deepsad sweep submit sweeps/quickstart.yaml
	$(BIN)/deepsad results show quickstart --top 5

test: setup
	$(BIN)/python -m pytest -m "not gpu"

unit: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check deepsad orchestration tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest tests/infra -q

bench: setup
	$(BIN)/python benchmarks/bench_core.py

# Not in CI's required path: the newest versions pyproject.toml allows, in a venv of their own.
test-latest:
	rm -rf $(LATEST)
	$(call install,$(LATEST),)
	$(LATEST)/bin/python -m pytest -m "not gpu"

# Renew the lock: resolve the newest allowed versions in a fresh venv, then freeze it. Run `make
# test-latest` (or `make test` after this) before committing the new constraints.txt.
lock:
	rm -rf $(LATEST)
	$(call install,$(LATEST),)
	{ echo "# The lock of tested versions: make setup / quickstart / test and CI install with"; \
	  echo "# \`pip install -c constraints.txt\`. Renew with \`make lock\` (see README.md)."; \
	  echo "# Resolved on $$(uname -sm), Python $$($(LATEST)/bin/python -c 'import platform; print(platform.python_version())')."; \
	  echo "# checkov==$(CHECKOV_VERSION)  (its own venv, .venv/checkov: see above)"; \
	  $(LATEST)/bin/python -m pip freeze --exclude-editable | sed -e 's/^torch==\(.*\)+cpu$$/torch==\1/'; \
	} > $(LOCK).new
	mv $(LOCK).new $(LOCK)

clean:
	rm -rf $(VENV) $(LATEST) runs .pytest_cache
