# Two commands a fresh machine needs: `make demo` and `make test`.
# Everything they need is installed here: a venv, configurable-http-proxy from npm,
# and Debian packages (chromium for browser tests) when missing.

VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
# Enterprise Gateway 3 pins jupyter_client 6 / jupyter_server 1: it gets a venv of its own
EG_VENV := .venv-eg
EG_REQS := examples/enterprise-gateway/requirements.txt
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/$(VENV)/bin:$(PATH)
# the JupyterLab widget: pip's build hook (labextension/hatch_build.py) runs npm ci + build
LABEXT_SRC := labextension/package.json labextension/package-lock.json \
	$(wildcard labextension/src/*.js labextension/style/*.css)

.PHONY: demo demo-eg demo-aws test install install-demo install-eg system-deps base-deps lint bench docs clean

# the demo's venv: the package and JupyterLab, nothing else
$(VENV)/.installed-demo: pyproject.toml $(LABEXT_SRC)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[lab]'
	touch $@

# the tests' venv adds the test tools (pytest, playwright, Kernel Gateway, ruff, ...)
$(VENV)/.installed: pyproject.toml $(LABEXT_SRC)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test,lab]'
	touch $(VENV)/.installed-demo $@

$(EG_VENV)/.installed: pyproject.toml $(EG_REQS)
	test -x $(EG_VENV)/bin/python || python3 -m venv $(EG_VENV)
	$(EG_VENV)/bin/pip install -q --upgrade pip
	$(EG_VENV)/bin/pip install -q -r $(EG_REQS)
	$(EG_VENV)/bin/pip install -q --no-deps -e .
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# Debian packages some tests need: chromium (browser tests), R with IRkernel (R kernel state),
# Shiny (a web app behind jupyter-server-proxy), HAProxy (the TCP port gateway), iptables (the
# EC2 hosts' metadata firewall, run by the machine simulator in test_ec2_security)
SYSTEM_DEPS := chromium r-base-core r-cran-irkernel r-cran-shiny r-cran-httpuv haproxy iptables
# root runs apt-get itself; anyone else through sudo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps: base-deps
	@missing=$$(for p in $(SYSTEM_DEPS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

# what even `make demo` needs: Python's venv module (Debian's python3 has it only with
# python3-venv, installed here) and Node.js 20+ with npm (configurable-http-proxy 5 refuses
# older; Debian 12's nodejs is 18, so it is not installed from there: said instead)
base-deps:
	@python3 -m venv --help >/dev/null 2>&1 || { \
		echo "installing Debian packages: python3-venv"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv >/dev/null; }
	@node -e 'process.exit(parseInt(process.versions.node) >= 20 ? 0 : 1)' 2>/dev/null && command -v npm >/dev/null || { \
		echo "Node.js 20 or newer with npm is needed (configurable-http-proxy 5): found $$(node --version 2>/dev/null || echo none)" >&2; exit 1; }

install: base-deps $(VENV)/.installed node_modules/.installed

install-demo: base-deps $(VENV)/.installed-demo node_modules/.installed

install-eg: $(EG_VENV)/.installed

demo: install-demo
	cd examples/local && jupyterhub -f jupyterhub_config.py

# Enterprise Gateway with moving kernels and JupyterLab in front (--gateway-url)
demo-eg: install-demo install-eg
	examples/enterprise-gateway/run.sh

# the ec2 provider and the S3 store in a simulated region: moto's server + the machine
# simulator (jupyterhub-migrate-ec2-sim); no AWS account (examples/aws/README.md)
$(VENV)/.installed-aws: $(VENV)/.installed-demo
	$(PIP) install -q 'moto[server]>=5.2' boto3
	touch $@

demo-aws: install-demo $(VENV)/.installed-aws
	examples/aws/demo.sh

# two workers, a module on one worker at a time (tests/conftest.py), modules in file order
# (the long browser and hub modules first, the short unit ones fill the end)
TEST_WORKERS ?= 2
test: install install-eg system-deps
	$(PY) -m pytest -ra --durations=25 -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: install
	$(PY) benchmarks/move.py

# docs/configuration.md from the traits' help (tests/unit/test_config_reference.py checks it)
docs: install
	$(PY) docs/gen_config_reference.py

clean:
	rm -rf $(VENV) $(EG_VENV) node_modules labextension/node_modules labextension/dist examples/*/var
