# Two entry points for a fresh Debian/Ubuntu machine (as root): `make run` and `make test`.
# Both go through scripts/bootstrap.sh, the one set-up path shared with CI and the Vagrant VM.
.PHONY: run test bootstrap bench

PYTEST_ARGS ?=
# Test files run on this many pytest-xdist workers, a file per worker at a time (its module
# fixtures, e.g. a simulator server, are made once). Most tests wait on packets and processes,
# so two workers halve the time on two cores. PYTEST_WORKERS=0 runs in this process.
PYTEST_WORKERS ?= 2
# `make run` serves with the flags' environment variables (DEVBOX_SIM_*) as they are, the data
# dir included (the command reads them itself: make never expands or splits them); DATA_DIR
# gives --data-dir, SERVE_ARGS more flags: make run SERVE_ARGS="--port 9000 --runtime netns".
DATA_DIR ?=
SERVE_ARGS ?=

run:
	./scripts/bootstrap.sh
	.venv/bin/devbox-sim serve $(if $(DATA_DIR),--data-dir '$(value DATA_DIR)') $(SERVE_ARGS)

test:
	./scripts/bootstrap.sh --test
	.venv/bin/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

BENCHES ?= policies_api policy_update devbox_create resolver resolve_connect throughput docker_create

# Each benchmark prints ratios against a baseline from the same run and writes
# bench/results/<name>.json. Most need root (namespaces); none sends packets off the machine.
bench:
	./scripts/bootstrap.sh --bench
	for b in $(BENCHES); do .venv/bin/python bench/$$b.py || exit 1; done
