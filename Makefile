# Ferry's two commands (see README.md):
#   make demo   install what is missing, build, run Ferry's main job
#   make test   install what is missing, build, run the whole test suite
# Other targets: deps, build, asan (test under ASan+UBSan), tsan (the C tests
# under ThreadSanitizer), fuzz (libFuzzer,
# FUZZ_SECONDS per target; fuzz/README.md), bench, format, clean.
# GPU (README "GPU"): ucx-cuda (UCX with CUDA transports into FERRY_UCX_CUDA_PREFIX,
# cached), test-cuda-ucx (the suite built against it, in build-cuda-ucx),
# gpu-bundle (what a bare GPU machine needs, as build-gpu-bundle/ferry-gpu.tar.gz).

BUILD_DIR ?= build
JOBS      ?= $(shell nproc)
CMAKE_ARGS ?=
FUZZ_SECONDS ?= 30
# Not named UCX_*: make exports command-line variables, and UCX warns (on
# stdout) about every UCX_* variable in its environment it does not know.
FERRY_UCX_CUDA_PREFIX ?= $(CURDIR)/build-ucx-cuda
CUDA_UCX_BUILD_DIR ?= build-cuda-ucx

.PHONY: all deps build test demo asan tsan fuzz bench format clean \
	ucx-cuda build-cuda-ucx test-cuda-ucx gpu-bundle

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

# The C tests (test_*, their coordinator and etcd included) under
# ThreadSanitizer; a report fails the test (halt_on_error). UCX's memory
# hooks crash under TSAN (UCX_MEM_EVENTS=no); tests/tsan.supp says what the
# rest of the settings leave out, and why. test_rpc_python drives Python.
tsan: deps
	cmake -S . -B build-tsan -DFERRY_TSAN=ON -DCMAKE_BUILD_TYPE=Debug -DFERRY_BUILD_BENCH=OFF $(CMAKE_ARGS)
	cmake --build build-tsan -j $(JOBS)
	UCX_MEM_EVENTS=no TSAN_OPTIONS="ignore_noninstrumented_modules=1 halt_on_error=1 \
	  second_deadlock_stack=1 suppressions=$(CURDIR)/tests/tsan.supp" \
	  ctest --test-dir build-tsan --output-on-failure -j $(JOBS) -R '^test_' -E '^test_rpc_python$$'

fuzz: deps
	cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DFERRY_FUZZ=ON
	cmake --build build-fuzz -j $(JOBS)
	FUZZ_SECONDS=$(FUZZ_SECONDS) ./scripts/fuzz.sh build-fuzz

bench: build
	./bench/run.sh $(BUILD_DIR)

ucx-cuda: deps
	./scripts/build-ucx-cuda.sh $(FERRY_UCX_CUDA_PREFIX)

build-cuda-ucx: ucx-cuda
	cmake -S . -B $(CUDA_UCX_BUILD_DIR) -DFERRY_UCX_PREFIX=$(FERRY_UCX_CUDA_PREFIX) $(CMAKE_ARGS)
	cmake --build $(CUDA_UCX_BUILD_DIR) -j $(JOBS)

test-cuda-ucx: build-cuda-ucx
	ctest --test-dir $(CUDA_UCX_BUILD_DIR) --output-on-failure -j $(JOBS)

gpu-bundle: build-cuda-ucx
	./scripts/gpu-bundle.sh $(CUDA_UCX_BUILD_DIR) $(FERRY_UCX_CUDA_PREFIX) build-gpu-bundle

format:
	clang-format -i $$(find include common rpc coordinator worker tools tests bench fuzz python -name '*.[ch]')

clean:
	rm -rf $(BUILD_DIR) build-asan build-tsan build-fuzz $(CUDA_UCX_BUILD_DIR) build-gpu-bundle
