# speechadapt: `make demo` installs everything and runs the main path end to end; `make test` installs and runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_DIR ?= .cache/demo

.PHONY: install system-deps test demo proto proto-check bench clean

system-deps:
	@{ command -v espeak-ng && test -f /usr/share/dict/words; } >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng wamerican; }

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

install: system-deps $(VENV)/.installed

proto: install
	$(PY) protos/gen.py

proto-check: install
	$(PY) protos/gen.py --check

test: install
	$(PY) -m pytest -q -ra

demo: install
	DEMO_DIR=$(DEMO_DIR) PY=$(PY) bash deploy/demo.sh

clean:
	rm -rf .cache build *.egg-info .pytest_cache
