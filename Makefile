# minicloud — the two commands a developer needs are `make up` and `make test`.
CARGO ?= cargo

.PHONY: up build test test-deps unit lint fmt bench demo compose-check k8s-check clean

## Run the whole cloud in one process (gateway on :4600).
up:
	$(CARGO) run --release -p minicloud -- up

build:
	$(CARGO) build --workspace --all-targets

## Lint, then every test (unit, end-to-end, binary) against the local Postgres and Redis.
test: lint compose-check test-deps
	$(CARGO) nextest run --workspace --exclude minicloud-bench --no-fail-fast

## Tests only, without the lint step.
unit: test-deps
	$(CARGO) nextest run --workspace --exclude minicloud-bench --no-fail-fast

## AWS's Python runtime interface client (PyPI), deployed unmodified by the invoker tests.
test-deps: target/pydeps/awslambdaric

target/pydeps/awslambdaric:
	python3 -m pip install --quiet --target target/pydeps awslambdaric

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
	./target/release/storage-bench
	./target/release/docdb-bench
	./target/release/invoker-bench
	python3 scripts/bench_report.py

demo:
	@echo "make demo: not yet — the thumbnail pipeline lands with issue 8"

## Validate the Kubernetes manifests against the API schemas (pip install kubernetes-validate).
k8s-check:
	kubernetes-validate --strict deploy/kubernetes/minicloud.yaml

## Validate docker-compose.yml (Debian package docker-compose; no Docker engine needed).
compose-check:
	docker-compose config -q

clean:
	$(CARGO) clean
