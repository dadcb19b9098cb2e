# Ferry's two commands (see README.md):
#   make demo   install what is missing, build, run Ferry's main job
#   make test   install what is missing, build, run the whole test suite
# Other targets: deps, build, asan (test under ASan+UBSan), fuzz (libFuzzer,
# FUZZ_SECONDS per target; fuzz/README.md), bench, format, clean.

BUILD_DIR ?= build
JOBS      ?= $(shell nproc)
CMAKE_ARGS ?=
FUZZ_SECONDS ?= 30

.PHONY: all deps build test demo asan fuzz bench format clean

all: build

deps:
	./scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD_DIR) $(CMAKE_ARGS)
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	ctest --test-dir $(BUILD_DIR) --output-on-failure -j $(JOBS)

demo: build
	./scripts/demo.sh $(BUILD_DIR)

asan:
	$(MAKE) test BUILD_DIR=build-asan CMAKE_ARGS="-DFERRY_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug"

fuzz: deps
	cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DFERRY_FUZZ=ON
	cmake --build build-fuzz -j $(JOBS)
	FUZZ_SECONDS=$(FUZZ_SECONDS) ./scripts/fuzz.sh build-fuzz

bench: build
	./bench/run.sh $(BUILD_DIR)

format:
	clang-format -i $$(find include common rpc coordinator worker tools tests bench fuzz -name '*.[ch]')

clean:
	rm -rf $(BUILD_DIR) build-asan build-fuzz
