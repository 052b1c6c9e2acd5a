# The two commands of the README, and a few conveniences.
.PHONY: run test build bench acceptance

run: ## install what is missing, start Redis (unless REDIS_URL is set), the worker and the API
	scripts/run.sh

test: ## every test: go vet, go test -race (real Redis and libvips), the shared acceptance suite
	scripts/test.sh

build:
	go build -o bin/ ./cmd/...

acceptance:
	scripts/acceptance.sh

bench: ## the benchmarks reported in BENCHMARKS.md (raw output in var/bench)
	scripts/bench.sh
