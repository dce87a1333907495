# altgrad: thin wrapper over CMake.
#   make test   install missing Debian packages, build plain and sanitized, run every test
#   make demo   build, start altgradd on its defaults, drive it with a real trainer, report
PY      ?= /usr/bin/python3
JOBS    ?= 2
BUILD   ?= build
SBUILD  ?= build-asan
FUZZ_SECONDS ?= 20
STRESS_N ?= 30

.PHONY: all deps build build-asan test test-c test-asan test-py demo bench fuzz tsan stress format format-check clean

all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DAG_WERROR=ON >/dev/null
	cmake --build $(BUILD) -j$(JOBS)

build-asan: deps
	cmake -S . -B $(SBUILD) -DCMAKE_BUILD_TYPE=Debug -DAG_SANITIZE=ON -DAG_WERROR=ON -DAG_BUILD_BENCH=OFF >/dev/null
	cmake --build $(SBUILD) -j$(JOBS)

test-asan: build-asan
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  bash scripts/ctest-summary.sh $(SBUILD)

test-c: build
	bash scripts/ctest-summary.sh $(BUILD)

test-py: build
	@if [ -d python/tests ]; then \
	  ALTGRAD_LIBRARY=$(CURDIR)/$(BUILD)/libaltgrad.so ALTGRAD_BUILD_DIR=$(CURDIR)/$(BUILD) \
	  PYTHONPATH=$(CURDIR)/python $(PY) -m pytest python/tests -q -p no:cacheprovider; \
	else echo "no python tests"; fi

# Sanitized first, then plain, then the fuzz smoke run and the TSan check,
# then pytest: the runners' summary lines close the output.
test: format-check test-asan test-c
	@if [ -f fuzz/CMakeLists.txt ]; then $(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(FUZZ_SECONDS); fi
	$(MAKE) --no-print-directory tsan
	$(MAKE) --no-print-directory test-py

fuzz: deps
	CC=clang cmake -S . -B build-fuzz -DAG_FUZZ=ON -DAG_BUILD_TESTS=OFF -DAG_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=Debug >/dev/null
	cmake --build build-fuzz -j$(JOBS)
	bash scripts/run-fuzz.sh build-fuzz $(FUZZ_SECONDS)

bench: build
	@for b in $(BUILD)/bench/bench_*; do [ -x "$$b" ] && "$$b"; done

demo: build
	@if [ -x scripts/demo.sh ]; then bash scripts/demo.sh $(BUILD); \
	else $(BUILD)/examples/ag_formats 2>/dev/null || echo "demo not built yet"; fi

# One C dialect (.clang-format): check every tracked C file, or rewrite them.
format-check: deps
	@files=$$(git ls-files '*.c' '*.h'); \
	if clang-format --dry-run --Werror $$files; then \
	  echo "clang-format: $$(echo $$files | wc -w) C files formatted as .clang-format says"; \
	else echo "clang-format: files above differ from .clang-format (make format fixes them)"; exit 1; fi

format: deps
	git ls-files '*.c' '*.h' | xargs clang-format -i

# Repeat the daemon and client suites STRESS_N times under ASan, no reruns.
stress: build-asan
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  bash scripts/stress.sh $(SBUILD) $(STRESS_N)

clean:
	rm -rf $(BUILD) $(SBUILD) build-fuzz build-tsan

# ThreadSanitizer check of the client (a plain program, because Criterion's
# runner does not start under TSan here; TSan needs ASLR off: setarch -R),
# then of the daemon: a TSan altgradd driven by the plain bench_ingest.
tsan: build
	cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DAG_BUILD_BENCH=OFF -DAG_BUILD_TESTS=OFF \
	  -DCMAKE_C_FLAGS="-fsanitize=thread -g" >/dev/null
	cmake --build build-tsan -j$(JOBS) --target altgrad_static altgradd
	$(CC) -std=c11 -g -fsanitize=thread -Iinclude -I. -I.deps/nng/include tests/tsan/client_threads.c \
	  build-tsan/libaltgrad.a -lmsgpackc -lmbedtls -lmbedx509 -lmbedcrypto -lpthread -latomic -lm \
	  -o build-tsan/client_threads
	for policy in 0 1; do \
	  TSAN_OPTIONS=halt_on_error=1:exitcode=66 setarch $$(uname -m) -R build-tsan/client_threads $$policy || exit 1; \
	done
	bash scripts/tsan-daemon.sh build-tsan $(BUILD)/bench/bench_ingest
