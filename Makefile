# fedex: `make` builds ./fedex (and ./fedex-cuda when nvcc is found), `make test` runs every test, `make debug` runs them under ASan+UBSan,
# `make fuzz` runs the fuzz targets, `make bench` the benchmarks. Sources are found by wildcard: every
# top-level .c but fedex.c goes into the library; tests/test_*.c are tests; fuzz/fuzz_*.c fuzz targets.

CC      ?= cc
BUILD   ?= release
WARN    := -Wall -Wextra -Werror
CSTD    := -std=c11 -D_GNU_SOURCE
ifeq ($(BUILD),debug)
  OPT   := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
else
  OPT   := -O2 -g
endif
CFLAGS  := $(CSTD) $(WARN) $(OPT) -fopenmp $(EXTRA_CFLAGS)
LDLIBS  := -lm -lpthread -lrt
B       := build/$(BUILD)

LIB_SRC := $(filter-out fedex.c,$(wildcard *.c))
LIB_OBJ := $(LIB_SRC:%.c=$(B)/%.o)
TESTS   := $(patsubst tests/%.c,$(B)/tests/%,$(wildcard tests/test_*.c))
FEDEX   := $(if $(filter release,$(BUILD)),fedex,$(B)/fedex)

# ---------------------------------------------------------------- CUDA (optional)
NVCC    ?= $(firstword $(shell command -v nvcc 2>/dev/null) $(wildcard /usr/local/cuda/bin/nvcc))
# nvcc may be a wrapper script outside the toolkit, so the library folder is asked of nvcc itself (the
# -L folders it would link with), then looked for beside it; CUDA_LIBDIR=... overrides. Without cuBLAS
# and cudart there, the build is CPU-only and says so.
ifneq ($(NVCC),)
  NVCC_LDIRS  := $(patsubst -L%,%,$(filter -L%,$(subst ",,$(shell $(NVCC) -dryrun -x cu /dev/null -o /dev/null 2>&1 | grep LIBRARIES=))))
  ifeq ($(origin CUDA_LIBDIR),undefined)
    CUDA_LIBDIR := $(firstword $(foreach d,$(abspath $(filter-out %/stubs,$(NVCC_LDIRS)) \
                     $(patsubst %/bin/nvcc,%,$(NVCC))/lib64 /usr/local/cuda/lib64), \
                     $(if $(and $(wildcard $(d)/libcublas.so),$(wildcard $(d)/libcudart.so)),$(d))))
  endif
endif
ifneq ($(and $(NVCC),$(CUDA_LIBDIR),$(wildcard gpu.cu),$(filter release,$(BUILD))),)
  GPU_OBJ   := $(B)/gpu.o
  FEDEX_CUDA := $(if $(filter release,$(BUILD)),fedex-cuda,$(B)/fedex-cuda)
  GPU_LIBS  := -L$(CUDA_LIBDIR) -Wl,-rpath,$(CUDA_LIBDIR) -lcublasLt -lcublas -lcudart -lstdc++
  GPU_DEF   := -DFEDEX_CUDA
  NVFLAGS   := -O2 -std=c++17 -DFEDEX_CUDA -gencode arch=compute_90,code=sm_90 \
               -gencode arch=compute_90,code=compute_90 -Xcompiler -Wall,-Wextra,-Werror
  BUILD_MSG := fedex: built ./fedex (CPU) and ./fedex-cuda (CUDA: $(NVCC), sm_90 + PTX); --device cuda runs the latter
else
  NO_CUDA   := $(if $(filter release,$(BUILD)),$(if $(NVCC),$(if $(CUDA_LIBDIR),gpu.cu absent,no cuBLAS/cudart beside $(NVCC)),nvcc not found),sanitizer build)
  BUILD_MSG := fedex: built for CPU only ($(NO_CUDA)); --device cuda will be refused
endif

# ---------------------------------------------------------------- MPI (optional)
# mpicc is found the way nvcc is; with it mpi.c is built with FEDEX_MPI and the programs are linked by it
# (the tests link no MPI: nothing they use calls mpi.c). Without it --transport mpi is refused.
MPICC   ?= $(firstword $(shell command -v mpicc 2>/dev/null))
ifneq ($(MPICC),)
  LINK    := $(MPICC)
  MPI_MSG := --transport mpi with $(MPICC)
else
  LINK    := $(CC)
  MPI_MSG := no mpicc, so --transport mpi will be refused (Debian: apt-get install openmpi-bin libopenmpi-dev)
endif

.PHONY: all test debug fuzz bench clean
all: $(FEDEX) $(FEDEX_CUDA)
	@echo "$(BUILD_MSG); $(MPI_MSG)"

$(B)/%.o: %.c fedex.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(B)/mpi.o: mpi.c fedex.h
	@mkdir -p $(dir $@)
	$(if $(MPICC),$(MPICC) $(CFLAGS) -DFEDEX_MPI,$(CC) $(CFLAGS)) -c $< -o $@

$(B)/fedex-cuda.o: fedex.c fedex.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(GPU_DEF) -c $< -o $@

# Files with a CUDA path (GPU clients, the server's GPU evaluation) are built a second time for fedex-cuda.
DUAL_SRC := client.c run.c
$(B)/cuda/%.o: %.c fedex.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(GPU_DEF) -c $< -o $@

$(B)/gpu.o: gpu.cu fedex.h
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(B)/libfedex.a: $(LIB_OBJ)
	rm -f $@; ar rcs $@ $^

# The CPU build links no CUDA library, so its commands start at once; the CUDA build is the same program
# with gpu.cu (loading cuBLAS costs a start a third of a second).
$(FEDEX): $(B)/fedex.o $(B)/libfedex.a
	$(LINK) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(FEDEX_CUDA): $(B)/fedex-cuda.o $(DUAL_SRC:%.c=$(B)/cuda/%.o) $(GPU_OBJ) $(B)/libfedex.a
	$(LINK) $(CFLAGS) $^ -o $@ $(GPU_LIBS) $(LDLIBS)

$(B)/tests/%: tests/%.c $(wildcard tests/*.h) $(B)/libfedex.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -I. $< $(B)/libfedex.a -o $@ $(LDLIBS)

# test_gpu emulates the GPU's products on the CPU by routing model.c's fx_matmul through its own wrapper.
$(B)/tests/test_gpu: tests/test_gpu.c $(wildcard tests/*.h) $(B)/libfedex.a $(GPU_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(GPU_DEF) -I. $< $(GPU_OBJ) $(B)/libfedex.a -o $@ -Wl,--wrap=fx_matmul $(GPU_LIBS) $(LDLIBS)

test: all $(TESTS)
	@FEDEX=./$(FEDEX) sh tests/run.sh $(TESTS)

debug:
	@$(MAKE) --no-print-directory BUILD=debug test

# ---------------------------------------------------------------- fuzzing (clang libFuzzer)
FUZZ_SECONDS ?= 60
FUZZ_SRC := $(wildcard fuzz/fuzz_*.c)
FUZZ_BIN := $(patsubst fuzz/%.c,build/fuzz/%,$(FUZZ_SRC))
FUZZ_CFLAGS := $(CSTD) $(WARN) -Wno-unknown-pragmas -O1 -g -fsanitize=fuzzer-no-link,address,undefined
build/fuzz/%.o: %.c fedex.h
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -c $< -o $@
FUZZ_LIB := $(LIB_SRC:%.c=%)   # the whole library: the input-facing files call into the family tables
build/fuzz/fuzz_%: fuzz/fuzz_%.c $(FUZZ_LIB:%=build/fuzz/%.o)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer -I. $^ -o $@ $(LDLIBS)
fuzz: $(FUZZ_BIN)
	@for f in $(FUZZ_BIN); do n=$$(basename $$f); mkdir -p build/fuzz/corpus-$$n; \
	  echo "== $$n for $(FUZZ_SECONDS) s"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 build/fuzz/corpus-$$n fuzz/seeds/$${n#fuzz_} \
	    2>build/fuzz/$$n.log || { tail -40 build/fuzz/$$n.log; exit 1; }; \
	  grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' build/fuzz/$$n.log; done

# ---------------------------------------------------------------- benchmarks
BENCH_SRC := $(wildcard bench/bench_*.c)
# bench_gpu needs the CUDA build (gpu.o, cuBLAS); without it `make bench` says so and runs the rest.
ifeq ($(GPU_OBJ),)
  BENCH_SRC := $(filter-out bench/bench_gpu.c,$(BENCH_SRC))
  BENCH_SKIP := echo "skipped: bench_gpu (no CUDA in this build: $(NO_CUDA))";
endif
BENCH_BIN := $(patsubst bench/%.c,$(B)/bench/%,$(BENCH_SRC))
$(B)/bench/%: bench/%.c $(B)/libfedex.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -I. $< $(B)/libfedex.a -o $@ -lopenblas $(LDLIBS)
$(B)/bench/bench_gpu: bench/bench_gpu.c $(B)/libfedex.a $(GPU_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(GPU_DEF) -I. $(if $(CUDA_LIBDIR),-isystem $(abspath $(CUDA_LIBDIR)/../include)) $< $(GPU_OBJ) \
	  $(B)/libfedex.a -o $@ $(GPU_LIBS) $(LDLIBS)
bench: all $(BENCH_BIN)
	@$(BENCH_SKIP) for b in $(BENCH_BIN); do echo "== $$b"; $$b || exit 1; done

clean:
	rm -rf build fedex fedex-cuda
