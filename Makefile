# Two commands a fresh machine needs: `make demo` and `make test`.
# Everything they need is installed here: a venv, configurable-http-proxy from npm,
# and Debian packages (chromium for browser tests) when missing.

VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: demo test install lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test,lab]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

install: $(VENV)/.installed node_modules/.installed

demo: install
	cd examples/local && jupyterhub -f jupyterhub_config.py

test: install
	$(PY) -m pytest -ra

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: install
	$(PY) benchmarks/move.py

clean:
	rm -rf $(VENV) node_modules examples/local/var
