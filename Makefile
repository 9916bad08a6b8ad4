# Two entry points for a fresh Debian/Ubuntu machine (as root): `make run` and `make test`.
# Both go through scripts/bootstrap.sh, the one set-up path shared with CI and the Vagrant VM.
.PHONY: run test bootstrap bench

PYTEST_ARGS ?=
DATA_DIR ?= data

run:
	./scripts/bootstrap.sh
	.venv/bin/devbox-sim serve --data-dir $(DATA_DIR)

test:
	./scripts/bootstrap.sh --test
	.venv/bin/python -m pytest $(PYTEST_ARGS)

BENCHES ?= policies_api policy_update devbox_create resolver resolve_connect throughput docker_create

# Each benchmark prints ratios against a baseline from the same run and writes
# bench/results/<name>.json. Most need root (namespaces); none sends packets off the machine.
bench:
	./scripts/bootstrap.sh --bench
	for b in $(BENCHES); do .venv/bin/python bench/$$b.py || exit 1; done
