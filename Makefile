# Kiln: the two commands a newcomer needs are `make up` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: help up down status dev images lint test test-e2e test-fast bench clean k8s-up k8s-down k8s-status k8s-install k8s-uninstall test-k8s

up:          ## install what is missing and run all of Kiln on 127.0.0.1
	@deploy/local/up.sh

down:        ## stop everything `make up` started
	@deploy/local/down.sh

status:      ## each part of the local stack and its address
	@deploy/local/status.sh

dev:         ## install the project into .venv
	@deploy/local/install-system.sh && deploy/local/venv.sh

images:      ## build each service's container image and push it to the local registry
	@deploy/local/images.sh

lint:        ## ruff over everything, mypy (strict) over the library and the services
	@deploy/local/install-system.sh && deploy/local/venv.sh
	@.venv/bin/ruff check lib services tests bench deploy
	@.venv/bin/mypy lib/kilnbus/src services/*/src

# Tests that need no infrastructure at all (no broker, engine, hub, browser or cluster): they run on
# every core; the rest share one stack and run one at a time.
FAST := not kafka and not docker and not hub and not e2e and not browser and not k8s

test: lint   ## lint, bring the whole stack up, then run every suite (the end-to-end one included)
	@KILN_WITH_BROWSER=1 deploy/local/up.sh
	@$(PY) -m pytest -q -n 2 -m "$(FAST)"
	@$(PY) -m pytest --durations=15 -m "not ($(FAST))"

test-e2e:    ## the end-to-end suite alone, against the running stack
	@KILN_WITH_BROWSER=1 deploy/local/up.sh
	@$(PY) -m pytest -m e2e

test-fast:   ## tests that need no infrastructure at all (no broker, engine, hub or browser)
	@deploy/local/venv.sh
	@$(PY) -m pytest -n 2 -m "$(FAST)" $(T)

bench:       ## benchmarks (print their figures; see bench/README.md)
	@deploy/local/up.sh infra
	@for b in bus_latency gateway_stream resolver_throughput launcher_latency builder_builds analytics_rebuild; do $(PY) bench/$$b.py; done

k8s-up:      ## a single-node Kubernetes in a network namespace of its own (built once per machine)
	@KILN_WITH_K8S=1 deploy/local/install-system.sh && deploy/local/docker.sh start
	@deploy/k8s/cluster.sh up

test-k8s:    ## the Kubernetes suite alone (its fixtures bring the cluster up and install Kiln first)
	@deploy/local/venv.sh
	@$(PY) -m pytest -m k8s

k8s-install: ## Kiln's Helm chart on that cluster, with Kafka, a registry and JupyterHub (KubeSpawner) in it
	@KILN_WITH_K8S=1 deploy/local/install-system.sh && deploy/local/docker.sh start && deploy/local/venv.sh
	@deploy/k8s/kiln.sh install

k8s-uninstall: ## remove Kiln (and its Kafka, registry and hub) from the cluster
	@deploy/k8s/kiln.sh uninstall

k8s-down:    ## stop that cluster (its state stays in .state/k8s)
	@deploy/k8s/cluster.sh down

k8s-status:  ## the cluster's processes and node
	@deploy/k8s/cluster.sh status

clean: down  ## stop everything and delete .state (Kafka log, registry, hub database)
	rm -rf .state

help:        ## this list: each target and what it does
	@grep -E '^[a-z0-9-]+:[^#=]*##' $(MAKEFILE_LIST) | sed -E 's/^([a-z0-9-]+):[^#]*## */  make \1\t/' | expand -t 24
