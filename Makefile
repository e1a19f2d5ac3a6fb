# The two README commands:  make demo   and   make test
# Everything else is plain CMake (cmake -S . -B build && cmake --build build).
JOBS ?= $(shell nproc)
DEMO_MODEL ?= $(firstword $(wildcard models/default/target) tests/data/tiny-qwen3/target)

.PHONY: all deps build build-asan test test-release test-asan demo clean

all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build build -j $(JOBS)

build-asan: deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DDSPARK_SANITIZE=ON -DDSPARK_CUDA=OFF >/dev/null
	cmake --build build-asan -j $(JOBS)

# Optimised run: everything but GPU tests. Sanitised run: everything but GPU and slow tests
# (sanitised tests shrink their sizes themselves through DSPARK_SANITIZED).
test: build build-asan
	cd build && ctest -LE cuda --output-on-failure -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest -LE 'cuda|slow' --output-on-failure -j $(JOBS)

demo: build
	bash scripts/demo.sh

clean:
	rm -rf build build-asan
