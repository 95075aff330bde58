# Kiln: the two commands a newcomer needs are `make up` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: up down status dev test test-e2e test-fast bench clean

up:          ## install what is missing and run all of Kiln on 127.0.0.1
	@deploy/local/up.sh

down:        ## stop everything `make up` started
	@deploy/local/down.sh

status:      ## each part of the local stack and its address
	@deploy/local/status.sh

dev:         ## install the project into .venv
	@deploy/local/install-system.sh && deploy/local/venv.sh

test:        ## start what the tests need, then run every suite but the end-to-end one
	@KILN_WITH_BROWSER=1 deploy/local/up.sh infra
	@$(PY) -m pytest -m "not e2e"

test-e2e:    ## the whole-system end-to-end suite alone
	@KILN_WITH_BROWSER=1 deploy/local/up.sh infra
	@$(PY) -m pytest -m e2e

test-fast:   ## tests that need no infrastructure at all
	@deploy/local/venv.sh
	@$(PY) -m pytest -m "not kafka and not docker and not hub and not e2e"

bench:       ## benchmarks (print their figures; see bench/README.md)
	@deploy/local/up.sh infra
	@$(PY) bench/bus_latency.py

clean: down  ## stop everything and delete .state (Kafka log, registry, hub database)
	rm -rf .state
