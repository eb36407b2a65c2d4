# Every target calls a `python -m` entry point inside .venv; `make setup` builds .venv from requirements.lock.
SHELL := /bin/bash
PYTHON_BOOTSTRAP ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
# Point pip at PyTorch's CPU wheel index to get the small CPU-only torch build, e.g.
#   make setup TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=
PIP_INSTALL_FLAGS := $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL),)
ARGS ?=

.PHONY: cpp-loader setup lock train-tf train-torch train-torch-ddp train-tf-multiworker tensorboard demo test clean serve stop status logs playground

setup: $(VENV)/.installed

# Rebuilt only when the lock file changes, so a second `make setup` does nothing.
$(VENV)/.installed: requirements.lock
	@test -x $(PYTHON) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet $(PIP_INSTALL_FLAGS) -r requirements.lock
# TorchServe's gRPC stubs, from the protos inside the installed torchserve, into the git-ignored build/
	$(PYTHON) -m serving.clients.torchserve_protos > /dev/null
	@touch $@

# Re-resolve requirements.in into requirements.lock in a throw-away environment.
lock:
	rm -rf .lock-venv && $(PYTHON_BOOTSTRAP) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet $(PIP_INSTALL_FLAGS) -r requirements.in
	{ echo "# Exact versions of every package make setup installs. Regenerate with: make lock"; \
	  echo "# torch is the CPU build where pip can find it (see TORCH_INDEX_URL in the README)."; \
	  .lock-venv/bin/pip freeze | sed 's/^torch==\([0-9.]*\)+.*/torch==\1/'; } > requirements.lock
	rm -rf .lock-venv

train-tf: setup
	$(PYTHON) -m tf_pipeline.train $(ARGS)

train-torch: setup
	$(PYTHON) -m torch_pipeline.train $(ARGS)

# Data-parallel training on NPROC local processes (docs/distributed.md). torch_pipeline.launch is
# `torchrun --nproc-per-node=$(NPROC) -m torch_pipeline.train $(ARGS)` with the flags and port checked first.
NPROC ?= 2
train-torch-ddp: setup
	$(PYTHON) -m torch_pipeline.launch --nproc-per-node=$(NPROC) -- $(ARGS)

train-tf-multiworker: setup
	$(PYTHON) -m tf_pipeline.launch --nproc $(NPROC) -- $(ARGS)

TENSORBOARD_PORT ?= 6006
tensorboard: setup
	$(PYTHON) -m experiment.tensorboard --logdir runs --host 127.0.0.1 --port $(TENSORBOARD_PORT)

# Train both, serve all three servers, query every endpoint, print a side-by-side table, stop.
demo: setup
	$(PYTHON) -m serving.demo $(ARGS)

# The three servers natively on 127.0.0.1 (docs/architecture.md), trained first if no export exists; state in .run/.
serve: setup
	$(PYTHON) -m serving.stack start $(ARGS)

stop: setup
	$(PYTHON) -m serving.stack stop

status: setup
	$(PYTHON) -m serving.stack status

logs: setup
	$(PYTHON) -m serving.stack logs $(ARGS)

# A page on 127.0.0.1:8000 (or the next free port) that sends a drawn digit to every endpoint of `make serve`.
playground: setup
	$(PYTHON) -m serving.playground $(ARGS)

# The measured comparison: reports/comparison.md, comparison.html (self-contained) and PNG plots; compare-quick
# skips the servers and the distributed runs. Addresses in TFSERVING_GRPC etc. measure a running stack instead.
.PHONY: compare compare-quick
compare: setup
	$(PYTHON) -m benchmarks.compare $(ARGS)

compare-quick: setup
	$(PYTHON) -m benchmarks.compare --quick $(ARGS)

test: setup
	$(PYTHON) -m pytest $(ARGS)

# The tests that start no server and train no model (pytest markers `server` and `training`, set by tests/conftest.py
# from the fixtures a test uses): a minute or so, for a change that touches neither.
.PHONY: test-fast lint
test-fast: setup
	$(PYTHON) -m pytest -m "not slow and not soak" $(ARGS)

# ruff's linter and formatter check, mypy over the typed packages and import-linter's contracts (pyproject.toml).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# deploy/ (docs/scaling.md): check every manifest against Kubernetes' and the CRDs' schemas; lay out the latest
# TorchServe archive under models/kserve/ the way KServe's TorchServe runtime reads it.
.PHONY: validate-manifests kserve-layout
validate-manifests: setup
	$(PYTHON) -m deploy.validate

kserve-layout: setup
	$(PYTHON) -m deploy.kserve_storage $(ARGS)

# docker-compose.yml built and run here end to end, with local stand-ins for the two official images (root; a few
# minutes; docs/docker.md). Installs docker.io, docker-compose and mmdebstrap if missing, starts dockerd if none
# runs (and stops it again). TORCH_INDEX_URL, as for setup, where pip cannot find torch's CPU build otherwise.
.PHONY: test-containers
test-containers: setup
	TORCH_INDEX_URL=$(TORCH_INDEX_URL) $(PYTHON) -m tests.containers.run $(ARGS)

# The C++ program that loads model.pt2 without Python (serving/cpp/pt2_classify.cpp), compiled against the torch
# wheel's own headers and libtorch: `make cpp-loader`, then build/pt2_classify models/torch/digits/<v>/model.pt2 x.txt
CXX ?= g++
CPP_LOADER ?= build/pt2_classify
cpp-loader: $(CPP_LOADER)

$(CPP_LOADER): serving/cpp/pt2_classify.cpp | setup
	@mkdir -p $(dir $@)
	torch_dir=$$($(PYTHON) -c "import os, torch; print(os.path.dirname(torch.__file__))") && \
	abi=$$($(PYTHON) -c "import torch; print(int(torch.compiled_with_cxx11_abi()))") && \
	$(CXX) -std=c++20 -O1 -D_GLIBCXX_USE_CXX11_ABI=$$abi -I$$torch_dir/include \
	  -I$$torch_dir/include/torch/csrc/api/include $< -L$$torch_dir/lib -ltorch -ltorch_cpu -lc10 \
	  -Wl,-rpath,$$torch_dir/lib -o $@

clean:
	rm -rf models runs reports .pytest_cache
