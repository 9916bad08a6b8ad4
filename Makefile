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

bench:
	./scripts/bootstrap.sh --test
	.venv/bin/python bench/policies_api.py
