# minicloud — the two commands a developer needs are `make up` and `make test`.
CARGO ?= cargo

.PHONY: up build test test-deps unit lint fmt bench demo compose-check k8s-check clean

## Run the whole cloud in one process (gateway on :4600).
up:
	$(CARGO) run --release -p minicloud -- up

build:
	$(CARGO) build --workspace --all-targets

## Lint, then every test (unit, end-to-end, binary) against the local Postgres and Redis.
test: lint compose-check k8s-check test-deps
	$(CARGO) nextest run --workspace --exclude minicloud-bench --no-fail-fast

## Tests only, without the lint step.
unit: test-deps
	$(CARGO) nextest run --workspace --exclude minicloud-bench --no-fail-fast

## AWS's Python runtime interface client (PyPI), deployed unmodified by the invoker tests.
test-deps: target/pydeps/awslambdaric target/pydeps/standardwebhooks target/pydeps-fuzz/schemathesis tests/clients/supabase-js/node_modules/.package-lock.json target/pydeps-supabase/supabase target/pydeps-aws/boto3 /usr/bin/chromedriver

## Headless Chromium and its WebDriver for the console's browser tests (Debian's).
/usr/bin/chromedriver:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver

target/pydeps/awslambdaric:
	python3 -m pip install --quiet --target target/pydeps awslambdaric

# The bounded fuzz pass over every REST operation (its own dir: its dependencies
# must not shadow the runtimes' in target/pydeps).
target/pydeps-fuzz/schemathesis:
	python3 -m pip install --quiet --target target/pydeps-fuzz schemathesis==4.32.5

# The official supabase-js, pinned by its package-lock (tests/it/supabase_clients.rs).
tests/clients/supabase-js/node_modules/.package-lock.json: tests/clients/supabase-js/package-lock.json
	npm ci --prefix tests/clients/supabase-js --no-audit --no-fund --loglevel=error

# The official supabase-py and pytest, pinned (its own dir: its dependencies must not
# shadow the runtimes' in target/pydeps).
target/pydeps-supabase/supabase: tests/clients/supabase-py/requirements.txt
	python3 -m pip install --quiet --target target/pydeps-supabase -r tests/clients/supabase-py/requirements.txt

# boto3 and pytest, pinned (tests/it/aws_clients.rs), in their own dir for the same reason.
target/pydeps-aws/boto3: tests/clients/aws/requirements.txt
	python3 -m pip install --quiet --target target/pydeps-aws -r tests/clients/aws/requirements.txt

# The Standard Webhooks reference library verifies the bus's signed deliveries.
target/pydeps/standardwebhooks:
	python3 -m pip install --quiet --target target/pydeps standardwebhooks==1.3.0

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Benchmarks; writes docs/benchmarks.md.
bench:
	$(CARGO) bench -p minicloud-e2e --bench auth -- --noplot
	$(CARGO) build --release -p minicloud -p minicloud-bench
	$(CARGO) build --release -p minicloud-e2e --bin echo-function
	$(CARGO) build --release -p thumbnail --bin thumbnail
	./target/release/auth-bench
	./target/release/storage-bench
	./target/release/docdb-bench
	./target/release/bus-bench
	./target/release/invoker-bench
	./target/release/metering-bench
	./target/release/pipeline-bench
	./target/release/traces-bench
	./target/release/console-bench
	python3 scripts/bench_report.py

## The photo-thumbnail pipeline against the cloud `make up` (or `docker compose up`)
## runs: builds the function, sets everything up, uploads photos, checks the results.
demo:
	$(CARGO) build --release -p minicloud -p thumbnail
	./target/release/minicloud demo thumbnail --function-binary target/release/thumbnail

## Check the kustomize tree deploy/kubernetes offline: rendered as kustomize does, the
## project's rules (replicas, probes, Services, env names), then the strict API schemas
## of the oldest and newest Kubernetes versions we target (kubernetes-validate, PyPI).
K8S_VERSIONS ?= 1.32.0 1.37.0
k8s-check: target/k8sdeps/kubernetes_validate
	PYTHONPATH=target/k8sdeps python3 scripts/k8s_check.py $(addprefix --kubernetes-version ,$(K8S_VERSIONS)) deploy/kubernetes

target/k8sdeps/kubernetes_validate:
	python3 -m pip install --quiet --target target/k8sdeps kubernetes-validate==1.37.0

## Validate docker-compose.yml (Debian package docker-compose; no Docker engine needed).
compose-check:
	docker-compose config -q

clean:
	$(CARGO) clean
