# Two commands on a fresh machine: `make demo` and `make test`. Every step is idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.stamp-install
PROTO_SRC := $(wildcard proto/asr/v1/*.proto)
PROTO_STAMP := proto/asr/v1/.stamp-gen
KEY := keys/operator.key
EDGE_MODEL := models/tiny.en-int8
CLOUD_MODEL ?= base

.PHONY: all setup apt venv proto models demo test lint check clean images fresh-check compose-test fuzz

all: setup

setup: apt venv proto models

apt:
	@bash scripts/ensure-apt.sh

venv: $(STAMP)

# torch==2.13.0 goes first: it is a CPU build from local disk; anything unpinned would pull CUDA builds.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[edge,cloud,dev,bench]'
	$(PIP) install -q --no-deps openai-whisper==20250625
	@touch $@

proto: $(PROTO_STAMP)

$(PROTO_STAMP): $(PROTO_SRC) | $(STAMP)
	$(PY) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. $(PROTO_SRC)
	@touch $@

$(KEY): | $(STAMP)
	$(PY) -m fleetctl keys init --dir keys

models/tiny.en.pt: | $(STAMP)
	$(PY) -m fleetctl model fetch tiny.en --out $@

models/$(CLOUD_MODEL).pt: | $(STAMP)
	$(PY) -m fleetctl model fetch $(CLOUD_MODEL) --out $@

# Rebuilt when the checkpoint or the build code changes.
$(EDGE_MODEL)/manifest.json: models/tiny.en.pt $(wildcard fleetctl/models/*.py) | $(KEY)
	$(PY) -m fleetctl model build models/tiny.en.pt --out $(EDGE_MODEL) --key $(KEY)

models: models/$(CLOUD_MODEL).pt $(EDGE_MODEL)/manifest.json

demo: setup
	$(PY) -m fleetctl model verify $(EDGE_MODEL) --pubkey keys/operator.pub
	$(PY) scripts/demo.py

lint: venv proto
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports

# Coverage of the product packages (pyproject's [tool.coverage]; child processes too): below 90 % fails.
test: setup lint
	$(PY) -m pytest --cov --cov-report=term

# The fuzz suite alone, deeper: FUZZ_EXAMPLES cases per target (make test draws 1000, derandomized), random
# seeds, failing examples kept in .hypothesis/ and replayed first next time.
FUZZ_EXAMPLES ?= 20000
fuzz: setup
	FUZZ_DEEP=1 FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -m fuzz tests/fuzz -p no:cacheprovider -W ignore::hypothesis.errors.HypothesisWarning -s

# Docker (docker.io, docker-compose 1.29, debootstrap; installed when missing). No registry: images build locally.
images: setup
	bash scripts/docker/images.sh

# The README's two commands in a clean Debian container, with both wall times (cold, then warm).
fresh-check:
	bash scripts/docker/fresh-check.sh

# The real stack end to end: TLS, tokens, the ACL, the operator key; escalation, config, rollout, cloud restart.
compose-test: setup
	bash scripts/docker/compose-test.sh

clean:
	rm -rf $(VENV) models/*.pt $(EDGE_MODEL) $(PROTO_STAMP)
