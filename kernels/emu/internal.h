// The CPU emulator: how kernel source written for the GPU runs, checked, on the host.
//
// This header is private to kernels/emu/*.cpp. The public surface is
// `sparse_attn/emu/runtime.h` (what the arch layer and the CUDA shim call from inside a kernel)
// and `sparse_attn/emu/api.h` (what Rust calls to launch a kernel).
//
// Design
// ------
// Fibers. Every CUDA thread of a block is a fiber: a guard-paged 64 KiB stack plus a
// `ThreadState` (threadIdx, blockIdx, ...). A worker OS thread runs one block at a time from
// its scheduler loop and switches into fibers with a dozen-instruction x86-64 context switch
// (context.cpp: callee-saved registers, MXCSR and the x87 control word; no syscalls, no heap).
// Other architectures fall back to ucontext. `threadIdx` and friends read the running fiber's
// state through a `thread_local` pointer to the current fiber of the worker.
//
// Scheduling. A fiber runs until it reaches a synchronisation point: `__syncthreads`,
// `__syncwarp`, a shuffle, mma, ldmatrix, `cp.async.wait_group` or its exit. The scheduler
// resumes the runnable fibers in rounds, in the launch's order: forward (ascending linear
// thread id), reverse, or a seeded random permutation redrawn every round (the seed is mixed
// with the block index, so a block's schedule does not depend on which worker runs it). A
// correct kernel produces bit-identical results under every order.
//
// Rendezvous. A warp collective is keyed by (operation, call site, mask). Each arriving lane
// records its operands in its fiber; the last participant to arrive computes the result for
// all of them (gather fragments, multiply, scatter) and marks them runnable. Shuffles and
// `__syncwarp` wait for the non-exited lanes of their mask; mma and ldmatrix need all 32
// lanes. Two lanes that must meet but arrive at different collectives are reported, as are
// lanes outside their own mask and lanes that exit while their warp waits for them at an mma.
// `__syncthreads` is keyed by call site and waits for every non-exited thread of the block;
// arriving at a different site than the threads already waiting is reported at once
// (divergence). When no fiber is runnable and some have not exited, the block is deadlocked:
// the report lists every group of blocked threads with its call site. Nothing ever hangs.
//
// cp.async. Issue validates size, alignment and bounds (the source must lie in a buffer from
// `sa_emu_alloc`), POISONS the destination with 0xFF bytes and records the copy in the
// thread's uncommitted set. `commit` closes a group (empty groups count). `wait_group N`
// lands only the oldest groups until at most N remain (copying source to destination and
// zero-filling past src-size) and then yields. Copies still pending at thread exit are
// reported. Eager mode copies at issue (to diff against the adversarial mode).
//
// Shadow memory. Every byte of a block's dynamic shared memory has a shadow state:
// uninitialised (nobody wrote it since the block started), clean, pending (a cp.async is in
// flight to it), landed (its copy completed in some thread's wait, and no `__syncthreads` has
// published it yet) or stored (a plain `sa::arch::sts` by one thread since the last barrier),
// plus the warp(s) that read it since the last barrier. Kernels reach shared memory only
// through `sa::Smem` (arch/memory.cuh), so every access is one of these checked ones. Reads
// (ldmatrix rows, `sa::arch::lds`) report an uninitialised byte, a pending byte ("read
// before wait_group"), a landed byte read by another thread ("missing __syncthreads after
// the wait"; a `__syncwarp` publishes it to the lanes of its mask) and a byte another thread
// stored with no barrier since (within a warp: no `__syncwarp` by the storing thread since).
// Stores report bytes in flight, bytes another thread stored or landed unpublished, and
// bytes another warp read since the last barrier. A warp collective (shfl, mma, ldmatrix)
// synchronises nothing here, as on the GPU. A cp.async issued over bytes another warp read since the last barrier is a
// write-after-read race (a prefetch overwriting a tile still in use). Barriers publish only
// the ranges recorded since the previous barrier: no full scans.
//
// Guard pages. `sa_emu_alloc` places each buffer flush against a trailing PROT_NONE page
// (and behind a leading one) and registers it with its label. Dynamic shared memory ends
// flush against a guard page too, and every fiber stack has a guard below it. A SIGSEGV or
// SIGBUS in a fiber is caught by a process-wide handler running on the worker's alternate
// signal stack; it records the faulting address and `siglongjmp`s back to the worker's
// scheduler, which reports the kernel, block, thread, address and the buffer whose guard was
// hit. A fault on any other thread is passed to the previously installed handler.
//
// Errors. The first error of a launch wins: the failing fiber is never resumed, the other
// workers stop at their next scheduling point, and `sa_emu_launch` returns the error code
// with a message naming kernel, block, thread and call sites.
//
// Concurrency. Launches are independent: the only process-wide state is the buffer registry
// (mutex-protected; each launch works on a snapshot) and the one-time signal setup.
#pragma once

#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <atomic>
#include <mutex>
#include <string>
#include <vector>

#include "sparse_attn/emu/api.h"
#include "sparse_attn/emu/runtime.h"

#if defined(__x86_64__) && !defined(SA_EMU_FORCE_UCONTEXT)
#define SA_EMU_ASM_CONTEXT 1
#else
#define SA_EMU_ASM_CONTEXT 0
#include <ucontext.h>
#endif

namespace sa {
namespace emu {
namespace detail {

constexpr unsigned kWarpSize = 32;
constexpr unsigned kMaxBlockThreads = 1024;
constexpr unsigned kMaxWarps = kMaxBlockThreads / kWarpSize;
// Opt-in maximum of dynamic shared memory per block of a compute capability (10 * major +
// minor), or 0 for one the emulator does not know.
inline size_t max_dynamic_smem(uint32_t arch) {
  switch (arch) {
    case 80:
    case 87:
      return 163 * 1024;
    case 86:
    case 89:
    case 120:
      return 99 * 1024;
    case 90:
    case 100:
      return 227 * 1024;
    default:
      return 0;
  }
}
constexpr size_t kMaxParamsBytes = 32764;       // CUDA 12.1+ kernel parameter limit
constexpr uint32_t kFullMask = 0xffffffffu;
constexpr uint8_t kPoisonByte = 0xff;
constexpr uint32_t kPoisonWord = 0xffffffffu;

// ---- formatted messages without heap allocation ----------------------------------------------

class Msg {
 public:
  Msg() { buf_[0] = '\0'; }
  void add(const char* fmt, ...) __attribute__((format(printf, 2, 3)));
  void vadd(const char* fmt, va_list ap);
  // Appends "tids 0-31, 40, 42-47" style lists of linear thread ids (sorted input).
  void add_id_list(const unsigned* ids, size_t n);
  const char* str() const { return buf_; }
  size_t len() const { return len_; }

 private:
  char buf_[2048];
  size_t len_ = 0;
};

// Call sites compare by line, then file name (the same literal is usually the same pointer).
inline bool same_site(const Site& a, const Site& b) {
  return a.line == b.line && (a.file == b.file || strcmp(a.file, b.file) == 0);
}

// ---- execution contexts (context.cpp) --------------------------------------------------------

struct Context {
#if SA_EMU_ASM_CONTEXT
  void* sp = nullptr;
#else
  ucontext_t uc;
  void (*entry)(void*) = nullptr;
  void* arg = nullptr;
#endif
};

// Prepares `ctx` so that the first switch to it calls entry(arg) on the given stack. `entry`
// must never return.
void context_init(Context* ctx, char* stack_lo, size_t stack_size, void (*entry)(void*),
                  void* arg);
// Saves the running context into `from` and resumes `to`.
void context_switch(Context* from, Context* to);

// Fiber stacks of one worker: one mapping, each usable stack above its own guard region.
class StackPool {
 public:
  static constexpr size_t kUsable = 64 * 1024;
  static constexpr size_t kGuard = 64 * 1024;  // larger than any sane frame: no stack clash
  StackPool() = default;
  StackPool(const StackPool&) = delete;
  StackPool& operator=(const StackPool&) = delete;
  ~StackPool();
  bool ensure(size_t count);
  char* stack_lo(size_t i) const { return map_ + i * (kGuard + kUsable) + kGuard; }
  // Index of the stack whose guard region contains `addr`, or -1.
  long guard_hit(uintptr_t addr) const;

 private:
  char* map_ = nullptr;
  size_t count_ = 0;
  size_t map_size_ = 0;
};

// ---- global buffers (memory.cpp) -------------------------------------------------------------

struct BufferInfo {
  uintptr_t begin = 0;
  size_t size = 0;
  uintptr_t map_begin = 0;
  size_t map_size = 0;
  std::string label;
};

// The registered buffers, sorted by address, copied at launch start.
std::vector<BufferInfo> snapshot_buffers();
// The buffer that contains all of [addr, addr + len), or null.
const BufferInfo* find_buffer(const std::vector<BufferInfo>& bufs, uintptr_t addr, size_t len);
// Appends a human description of `addr` relative to the nearest buffer / guard page.
void describe_global_address(const std::vector<BufferInfo>& bufs, uintptr_t addr, Msg& out);

// The block's dynamic shared memory: `size` bytes (rounded up to 16 in the mapping) ending
// flush against a PROT_NONE page.
class SharedMemory {
 public:
  SharedMemory() = default;
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;
  ~SharedMemory();
  bool init(size_t bytes);
  char* base() const { return base_; }
  size_t size() const { return size_; }
  size_t padded() const { return padded_; }
  bool in_guard(uintptr_t addr) const;

 private:
  char* map_ = nullptr;
  size_t map_size_ = 0;
  char* base_ = nullptr;
  size_t size_ = 0;
  size_t padded_ = 0;
};

size_t page_size();

// ---- per-thread and per-block state ------------------------------------------------------------

struct Launch;
struct Worker;

enum class FiberState : uint8_t { Runnable, Blocked, Exited, Failed };
enum class WaitKind : uint8_t { None, Barrier, Warp };
enum class CollOp : uint8_t { Shfl, SyncWarp, Mma, Ldmatrix };

// One cp.async of one thread, in issue order.
struct PendingCopy {
  uint32_t dst_off;  // byte offset in dynamic shared memory
  uint8_t cp_size;
  uint8_t src_size;
  bool eager;        // already copied at issue
  uint32_t group;    // the commit group it belongs to (groups_committed at issue)
  const void* src;
  Site site;
};

// What a lane brings to a warp collective (read by the lane that completes it).
struct Arrival {
  // shfl
  uint32_t value;
  int b, c;
  int mode;
  uint32_t result;
  // mma
  const uint32_t* a;
  const uint32_t* bfrag;
  const float* cfrag;
  float* d;
  // ldmatrix
  const void* addr;
  uint32_t* regs;
};

struct Fiber {
  Context ctx;
  ThreadState ts{};
  Worker* worker = nullptr;
  FiberState state = FiberState::Runnable;
  WaitKind wait = WaitKind::None;
  Site wait_site{"", 0};
  Site last_site{"", 0};  // the most recent emulator call (named in fault reports)
  int coll_slot = -1;      // index of the collective this lane waits in
  Arrival arrival{};
  // cp.async bookkeeping: copies[copies_head..] are not landed yet.
  std::vector<PendingCopy> copies;
  size_t copies_head = 0;
  uint32_t groups_committed = 0;
  uint32_t groups_landed = 0;
  // __syncwarp calls this thread completed: a plain store is visible to the other lanes of
  // its warp once its writer's count has moved past the one recorded with the store.
  uint32_t syncwarps = 0;
};

struct Collective {
  CollOp op;
  uint8_t sub;  // shuffle mode / ldmatrix num+trans / mma type+k
  Site site;
  uint32_t mask;
  uint32_t arrived;
};

struct WarpState {
  uint32_t exited = 0;       // exited lanes, and lanes that do not exist (partial warp)
  uint32_t active_slots = 0;  // bit i: slot[i] holds a pending collective
  Collective slot[kWarpSize];
};

// A range of shared memory whose cp.async landed in some thread's wait.
struct Landed {
  uint32_t off;
  uint32_t len;
  uint32_t owner;    // linear thread id of the thread that waited
  uint32_t visible;  // lanes of the owner's warp allowed to read it (owner; +__syncwarp)
  Site issue_site;
  Site wait_site;
};

struct Range {
  uint32_t off;
  uint32_t len;
};

// Per byte of shared memory: never written since the block started (reads are reported),
// written and published, a cp.async in flight, landed in its issuer's wait but not yet
// published, or plainly stored (sts) since the last barrier by the thread in sh_info.
enum ShadowState : uint8_t { kUninit = 0, kClean = 1, kPending = 2, kLanded = 3, kStored = 4 };
// sh_info of a kStored byte: the storing thread's linear id, and its __syncwarp count then.
constexpr uint32_t kStoreTidBits = 10;
constexpr uint32_t kStoreTidMask = (1u << kStoreTidBits) - 1;
constexpr uint8_t kReadByMany = 0xff;  // reader tag: several warps (otherwise warp + 1)

struct Launch {
  sa_emu_kernel_fn fn = nullptr;
  std::string name;
  sa_emu_launch_config cfg{};
  std::vector<max_align_t> params;  // the params struct, suitably aligned
  std::vector<BufferInfo> buffers;
  unsigned block_threads = 0;
  uint64_t total_blocks = 0;
  std::atomic<uint64_t> next_block{0};
  std::atomic<bool> failed{false};
  std::mutex report_mu;
  bool reported = false;
  sa_emu_report report{};
};

struct Worker {
  Launch* launch = nullptr;
  Context sched;
  std::vector<Fiber> fibers;
  std::vector<WarpState> warps;
  std::vector<uint16_t> order;
  StackPool stacks;
  SharedMemory smem;
  // Shadow of the dynamic shared memory, one entry per byte.
  std::vector<uint8_t> sh_state;
  std::vector<uint32_t> sh_info;  // pending: issuing thread; landed: index into `landed`
  std::vector<uint8_t> sh_reader;
  // For bytes read by one warp since the last barrier: the lanes that read them since that
  // warp's latest __syncwarp, and the warp's __syncwarp count then (same-warp write-after-read).
  std::vector<uint32_t> sh_read_lanes;
  std::vector<uint32_t> sh_read_sync;
  std::vector<uint32_t> warp_syncs;  // __syncwarp calls completed, per warp
  std::vector<Landed> landed;
  std::vector<Range> read_ranges;
  std::vector<Range> store_ranges;  // plain stores since the last barrier
  // Block state.
  Dim3 block_idx{0, 0, 0};
  unsigned nthreads = 0;
  unsigned nwarps = 0;
  unsigned live = 0;
  int first_exited = -1;  // linear id of the first thread of the block that exited, or -1
  unsigned bar_arrived = 0;
  Site bar_site{"", 0};
  uint64_t rng = 0;
  // Fault handling: set by the signal handler before it jumps back to the scheduler.
  sigjmp_buf jmp;
  volatile sig_atomic_t in_fiber = 0;
  Fiber* volatile running = nullptr;
  volatile int fault_sig = 0;
  volatile uintptr_t fault_addr = 0;
  volatile uintptr_t fault_pc = 0;
  volatile int fault_write = -1;  // 1 write, 0 read, -1 unknown
};

// ---- executor services used by the other translation units (executor.cpp) --------------------

// The fiber running on this OS thread; reports and aborts when called outside a launch.
Fiber* current_fiber(const char* what);
// Switches from `f` back to its worker's scheduler. Returns when `f` is resumed.
void yield(Fiber* f);
// Blocks `f` (state Blocked) until another fiber makes it runnable.
void block_on(Fiber* f, WaitKind kind, Site site);
// Records the launch's error (first one wins) on behalf of thread `who` at `site` and ends the
// calling fiber, which is never resumed.
[[noreturn]] void fail(Fiber* self, int code, const Fiber* who, Site site, const Msg& what);
// Appends " thread (x,y,z) [warp w lane l]" for a fiber.
void describe_thread(const Fiber* f, Msg& out);

// ---- warp collectives (warp.cpp) -------------------------------------------------------------

// A lane has exited: completes shuffles/syncwarps that no longer wait for it, reports
// mma/ldmatrix collectives that still need it.
void warp_lane_exited(Fiber* f);
void reset_warps(Worker* w);
// Appends the collective's name ("shfl.bfly mask 0x...", "mma.m16n8k16.f16", ...).
void describe_collective(const Collective& c, Msg& m);

// ---- cp.async and shadow memory (cp_async.cpp) -----------------------------------------------

void reset_shadow(Worker* w);
// Publishes all landed ranges and forgets the reads since the last barrier.
void publish_at_barrier(Worker* w);
// A __syncwarp over `mask` of warp `warp` makes that warp's landed ranges visible to `mask`.
void publish_at_syncwarp(Worker* w, unsigned warp, uint32_t mask);
// Checks a read of [off, off + len) by lanes `lanes` of warp `warp` and records it. `who` is
// named in a report; `self` is the fiber running the check.
void check_and_record_read(Fiber* self, const Fiber* who, uint32_t off, uint32_t len,
                           unsigned warp, uint32_t lanes, Site site, const char* what);
// Reports copies still pending when `f` exits.
void check_copies_at_exit(Fiber* f);

// ---- numerics (numerics.cpp) ----------------------------------------------------------------

// a + b as the launch's numerics mode has tensor cores add: round to nearest, or (pessimistic)
// toward zero.
float mma_add(float a, float b, bool pessimistic);

}  // namespace detail
}  // namespace emu
}  // namespace sa
