/* Emulator C API: what Rust (or any host program) calls to run a kernel on the CPU.
 *
 * Plain C so bindgen / hand-written `extern "C"` blocks mirror it exactly. A launch runs the
 * kernel entry `fn` (declared with SA_KERNEL) for every thread of every block: each CUDA
 * thread is a fiber, blocks are spread over worker OS threads. Global memory the kernel
 * touches should come from `sa_emu_alloc`, which places each buffer flush against a guard
 * page so out-of-bounds accesses are caught and reported instead of corrupting memory. */
#ifndef SPARSE_ATTN_EMU_API_H
#define SPARSE_ATTN_EMU_API_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A kernel entry as SA_KERNEL declares it on the host. */
typedef void (*sa_emu_kernel_fn)(const void* params);

/* Order in which runnable fibers (emulated threads) are resumed. A correct kernel gives
 * identical results under every order. */
typedef enum {
  SA_EMU_SCHEDULE_FORWARD = 0, /* warps and lanes in ascending order */
  SA_EMU_SCHEDULE_REVERSE = 1, /* descending */
  SA_EMU_SCHEDULE_RANDOM = 2   /* seeded shuffle of warps and lanes at every scheduling step */
} sa_emu_schedule;

/* Arithmetic of the emulated tensor cores and ex2.approx. */
typedef enum {
  /* mma sums its products in ascending k in f32 (round to nearest), C added last; exp2 exact */
  SA_EMU_NUMERICS_EXACT = 0,
  /* mma adds C first, then the products in descending k, each partial sum rounded toward zero
   * (as tensor cores truncate); ex2 flushes subnormal inputs and results to zero and errs by
   * up to 2 ulp: results a kernel must tolerate on real hardware */
  SA_EMU_NUMERICS_PESSIMISTIC = 1
} sa_emu_numerics;

typedef struct {
  uint32_t grid[3];
  uint32_t block[3];
  uint32_t dynamic_smem_bytes;
  uint32_t schedule;       /* sa_emu_schedule */
  uint64_t seed;           /* for SA_EMU_SCHEDULE_RANDOM */
  uint32_t eager_cp_async; /* 1: cp.async copies at issue (for diffing); 0: adversarial */
  uint32_t workers;        /* OS threads for blocks; 0 = available cores */
  /* The compute capability whose launch limits apply, as 10 * major + minor (80, 86, 89,
   * 90, ...): dynamic shared memory per block is at most 163 KB on 80 and 87, 99 KB on 86
   * and 89 (and 120), 227 KB on 90 and 100. */
  uint32_t arch;
  uint32_t numerics; /* sa_emu_numerics */
} sa_emu_launch_config;

/* What went wrong, if anything. `code` 0 = success. */
typedef enum {
  SA_EMU_OK = 0,
  SA_EMU_ERR_CONFIG = 1,          /* invalid launch configuration */
  SA_EMU_ERR_OUT_OF_BOUNDS = 2,   /* global/shared access outside any buffer (guard page) */
  SA_EMU_ERR_BARRIER = 3,         /* divergent __syncthreads / deadlock */
  SA_EMU_ERR_WARP = 4,            /* collective with missing/mismatched lanes */
  SA_EMU_ERR_CP_ASYNC = 5,        /* misuse of cp.async (read before wait, overlap, size...) */
  SA_EMU_ERR_MISALIGNED = 6,      /* misaligned ldmatrix row, cp.async, lds/sts or ldg/stg */
  SA_EMU_ERR_TRAP = 7,            /* kernel called trap / assertion */
  SA_EMU_ERR_INTERNAL = 8,
  SA_EMU_ERR_RACE = 9,            /* unsynchronised shared-memory access between threads */
  SA_EMU_ERR_UNINITIALIZED = 10   /* read of shared memory no thread wrote */
} sa_emu_error_code;

typedef struct {
  int32_t code; /* sa_emu_error_code */
  uint32_t block[3];
  uint32_t thread[3];
  char message[2048]; /* one or more lines: what, where (kernel, block, thread, call sites) */
} sa_emu_report;

/* Runs one launch to completion. Returns report->code. `params` (params_size bytes) is
 * copied; `kernel_name` is used in reports only. Thread-safe: several launches may run
 * concurrently from different host threads. */
int32_t sa_emu_launch(sa_emu_kernel_fn fn, const char* kernel_name,
                      const sa_emu_launch_config* config, const void* params,
                      size_t params_size, sa_emu_report* report);

/* Guarded allocation for kernel-visible global memory; zero-filled. `label` names the buffer
 * in out-of-bounds reports (copied). Returns NULL on failure. */
void* sa_emu_alloc(size_t bytes, const char* label);
void sa_emu_free(void* ptr);

#ifdef __cplusplus
}
#endif

#endif /* SPARSE_ATTN_EMU_API_H */
