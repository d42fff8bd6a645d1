# Two commands a fresh machine needs: `make demo` and `make test`.
# Everything they need is installed here: a venv, configurable-http-proxy from npm,
# and Debian packages (chromium for browser tests) when missing.

VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: demo test install system-deps lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test,lab]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# Debian packages some tests need: chromium (browser tests), R with IRkernel (R kernel state)
SYSTEM_DEPS := chromium r-base-core r-cran-irkernel
system-deps:
	@missing=$$(for p in $(SYSTEM_DEPS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

install: $(VENV)/.installed node_modules/.installed

demo: install
	cd examples/local && jupyterhub -f jupyterhub_config.py

test: install system-deps
	$(PY) -m pytest -ra

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: install
	$(PY) benchmarks/move.py

clean:
	rm -rf $(VENV) node_modules examples/local/var
