// The executor: `sa_emu_launch`, worker threads, the per-block fiber scheduler, block barriers,
// deadlock and fault reports. See internal.h for the emulator's design.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <memory>
#include <thread>

#include "internal.h"

namespace sa {
namespace emu {
namespace detail {

// ---- messages -------------------------------------------------------------------------------------

void Msg::vadd(const char* fmt, va_list ap) {
  if (len_ + 1 >= sizeof(buf_)) return;
  const int n = vsnprintf(buf_ + len_, sizeof(buf_) - len_, fmt, ap);
  if (n > 0) len_ = std::min(sizeof(buf_) - 1, len_ + static_cast<size_t>(n));
}

void Msg::add(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vadd(fmt, ap);
  va_end(ap);
}

void Msg::add_id_list(const unsigned* ids, size_t n) {
  size_t i = 0;
  bool first = true;
  while (i < n) {
    size_t j = i;
    while (j + 1 < n && ids[j + 1] == ids[j] + 1) ++j;
    if (j == i) {
      add("%s%u", first ? "" : ", ", ids[i]);
    } else {
      add("%s%u-%u", first ? "" : ", ", ids[i], ids[j]);
    }
    first = false;
    i = j + 1;
  }
}

// ---- the running fiber ----------------------------------------------------------------------------

// Plain pointers with constant initialisation: safe to read from the signal handler.
static thread_local Fiber* t_fiber = nullptr;
static thread_local Worker* t_worker = nullptr;

Fiber* current_fiber(const char* what) {
  Fiber* f = t_fiber;
  if (f == nullptr) {
    fprintf(stderr,
            "sparse-attn emulator: %s called outside an emulated kernel launch (kernel code "
            "must run through sa_emu_launch)\n",
            what);
    abort();
  }
  return f;
}

void yield(Fiber* f) { context_switch(&f->ctx, &f->worker->sched); }

void block_on(Fiber* f, WaitKind kind, Site site) {
  f->state = FiberState::Blocked;
  f->wait = kind;
  f->wait_site = site;
  yield(f);
}

void describe_thread(const Fiber* f, Msg& out) {
  const ThreadState& t = f->ts;
  out.add("thread (%u,%u,%u) [warp %u, lane %u]", t.thread_idx.x, t.thread_idx.y,
          t.thread_idx.z, t.warp, t.lane);
}

// Fills the launch's report unless an earlier error already did. Thread-safe.
static void record_error(Launch* launch, int code, const ThreadState* who, const char* text) {
  std::lock_guard<std::mutex> lock(launch->report_mu);
  if (!launch->reported) {
    launch->reported = true;
    sa_emu_report& r = launch->report;
    r.code = code;
    if (who != nullptr) {
      r.block[0] = who->block_idx.x;
      r.block[1] = who->block_idx.y;
      r.block[2] = who->block_idx.z;
      r.thread[0] = who->thread_idx.x;
      r.thread[1] = who->thread_idx.y;
      r.thread[2] = who->thread_idx.z;
    }
    snprintf(r.message, sizeof(r.message), "%s", text);
  }
  launch->failed.store(true, std::memory_order_release);
}

// "<what>\n  kernel K, block (..), thread (..) [warp w, lane l]\n  at FILE:LINE"
static void compose(const Launch* launch, const Fiber* who, const char* site_label, Site site,
                    const char* what, Msg& m) {
  m.add("%s\n  kernel %s, block (%u,%u,%u), ", what, launch->name.c_str(), who->ts.block_idx.x,
        who->ts.block_idx.y, who->ts.block_idx.z);
  describe_thread(who, m);
  if (site.line > 0) m.add("\n  %s %s:%d", site_label, site.file, site.line);
}

[[noreturn]] void fail(Fiber* self, int code, const Fiber* who, Site site, const Msg& what) {
  Launch* launch = self->worker->launch;
  Msg m;
  compose(launch, who, "at", site, what.str(), m);
  record_error(launch, code, &who->ts, m.str());
  self->state = FiberState::Failed;
  yield(self);
  abort();  // a failed fiber is never resumed
}

// ---- barriers ---------------------------------------------------------------------------------------

static void complete_barrier(Worker* w) {
  publish_at_barrier(w);
  for (unsigned i = 0; i < w->nthreads; ++i) {
    Fiber& f = w->fibers[i];
    if (f.state == FiberState::Blocked && f.wait == WaitKind::Barrier) {
      f.state = FiberState::Runnable;
      f.wait = WaitKind::None;
    }
  }
  w->bar_arrived = 0;
}

// Lists the blocked threads grouped by where they wait (and `extra`, which is arriving at
// `extra_site` without being blocked yet).
static void list_blocked(Worker* w, Msg& m, const Fiber* extra, Site extra_site) {
  struct Group {
    WaitKind kind;
    Site site;
    unsigned warp;
    int slot;
    std::vector<unsigned> tids;
  };
  std::vector<Group> groups;
  auto add = [&](const Fiber& f, WaitKind kind, Site site) {
    const int slot = kind == WaitKind::Warp ? f.coll_slot : -1;
    const unsigned warp = kind == WaitKind::Warp ? f.ts.warp : 0;
    for (Group& g : groups) {
      if (g.kind == kind && same_site(g.site, site) && g.warp == warp && g.slot == slot) {
        g.tids.push_back(f.ts.linear_tid);
        return;
      }
    }
    groups.push_back(Group{kind, site, warp, slot, {f.ts.linear_tid}});
  };
  for (unsigned i = 0; i < w->nthreads; ++i) {
    const Fiber& f = w->fibers[i];
    if (f.state == FiberState::Blocked) add(f, f.wait, f.wait_site);
  }
  if (extra != nullptr) add(*extra, WaitKind::Barrier, extra_site);
  for (Group& g : groups) {
    std::sort(g.tids.begin(), g.tids.end());
    m.add("\n  %zu thread%s at ", g.tids.size(), g.tids.size() == 1 ? "" : "s");
    if (g.kind == WaitKind::Barrier) {
      m.add("__syncthreads");
    } else {
      describe_collective(w->warps[g.warp].slot[g.slot], m);
      m.add(" (warp %u)", g.warp);
    }
    m.add(" %s:%d: linear thread ids ", g.site.file, g.site.line);
    m.add_id_list(g.tids.data(), g.tids.size());
  }
  const unsigned exited = w->nthreads - w->live;
  if (exited > 0) m.add("\n  (%u thread%s of the block exited)", exited, exited == 1 ? "" : "s");
}

// ---- fibers -----------------------------------------------------------------------------------------

[[noreturn]] static void thread_exit(Fiber* f) {
  Worker* w = f->worker;
  check_copies_at_exit(f);
  if (w->bar_arrived > 0) {
    Msg what;
    what.add("thread exited while %u thread%s of its block wait at __syncthreads %s:%d, a "
             "barrier it never reached (a barrier skipped by an early return)",
             w->bar_arrived, w->bar_arrived == 1 ? "" : "s", w->bar_site.file, w->bar_site.line);
    fail(f, SA_EMU_ERR_BARRIER, f, f->last_site, what);
  }
  if (w->first_exited < 0) w->first_exited = static_cast<int>(f->ts.linear_tid);
  f->state = FiberState::Exited;
  --w->live;
  warp_lane_exited(f);
  if (w->bar_arrived > 0 && w->bar_arrived == w->live) complete_barrier(w);
  yield(f);
  abort();  // an exited fiber is never resumed
}

static void fiber_main(void* arg) {
  Fiber* f = static_cast<Fiber*>(arg);
  Launch* launch = f->worker->launch;
  launch->fn(launch->params.data());
  thread_exit(f);
}

static uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// ---- faults -----------------------------------------------------------------------------------------

static constexpr int kFaultSignals[] = {SIGSEGV, SIGBUS, SIGFPE};
static struct sigaction g_prev_actions[3];

static void fault_handler(int sig, siginfo_t* info, void* uctx) {
  Worker* w = t_worker;
  if (w != nullptr && w->in_fiber) {
    w->fault_sig = sig;
    w->fault_addr = reinterpret_cast<uintptr_t>(info->si_addr);
#if defined(__x86_64__)
    const ucontext_t* uc = static_cast<const ucontext_t*>(uctx);
    w->fault_pc = static_cast<uintptr_t>(uc->uc_mcontext.gregs[REG_RIP]);
    w->fault_write = sig == SIGSEGV ? ((uc->uc_mcontext.gregs[REG_ERR] & 2) != 0 ? 1 : 0) : -1;
#endif
    siglongjmp(w->jmp, 1);
  }
  // Not ours: hand it to whoever was installed before us (Rust's stack-overflow handler), or
  // restore the default action so the faulting instruction re-executes and kills the process.
  for (size_t i = 0; i < 3; ++i) {
    if (kFaultSignals[i] != sig) continue;
    const struct sigaction& prev = g_prev_actions[i];
    if ((prev.sa_flags & SA_SIGINFO) != 0 && prev.sa_sigaction != nullptr) {
      prev.sa_sigaction(sig, info, uctx);
      return;
    }
    if ((prev.sa_flags & SA_SIGINFO) == 0 && prev.sa_handler != SIG_DFL &&
        prev.sa_handler != SIG_IGN) {
      prev.sa_handler(sig);
      return;
    }
  }
  struct sigaction dfl;
  memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, nullptr);
  if (info->si_code <= 0) raise(sig);  // sent by kill(): re-executing would not re-raise it
}

static void install_fault_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = fault_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    for (size_t i = 0; i < 3; ++i) sigaction(kFaultSignals[i], &sa, &g_prev_actions[i]);
  });
}

// Builds the report for a fault caught in a fiber (called on the scheduler's stack).
static void report_fault(Worker* w) {
  Launch* launch = w->launch;
  const Fiber* f = w->running;
  const uintptr_t addr = w->fault_addr;
  int code = SA_EMU_ERR_OUT_OF_BOUNDS;
  Msg what;
  const char* access = w->fault_write == 1 ? "write" : w->fault_write == 0 ? "read" : "access";
  const long stack = w->stacks.guard_hit(addr);
  if (w->fault_sig == SIGFPE) {
    code = SA_EMU_ERR_TRAP;
    what.add("arithmetic exception (SIGFPE: integer division by zero or overflow)");
  } else if (stack >= 0) {
    code = SA_EMU_ERR_INTERNAL;
    f = &w->fibers[static_cast<size_t>(stack)];
    what.add("fiber stack overflow: the emulated thread used more than its %zu KiB stack (deep "
             "recursion or very large local arrays) at address 0x%zx",
             StackPool::kUsable / 1024, static_cast<size_t>(addr));
  } else if (w->smem.in_guard(addr)) {
    const uintptr_t base = reinterpret_cast<uintptr_t>(w->smem.base());
    what.add("out-of-bounds shared memory %s at 0x%zx: byte offset %zu of the block's dynamic "
             "shared memory, which has %zu bytes (hit the guard page after it)",
             access, static_cast<size_t>(addr), static_cast<size_t>(addr - base),
             w->smem.size());
  } else {
    what.add("out-of-bounds global memory %s at 0x%zx: ", access, static_cast<size_t>(addr));
    describe_global_address(launch->buffers, addr, what);
  }
  if (w->fault_pc != 0) what.add("\n  faulting instruction at pc 0x%zx", static_cast<size_t>(w->fault_pc));
  if (f == nullptr) {
    record_error(launch, code, nullptr, what.str());
    return;
  }
  Msg m;
  compose(launch, f, "after its last emulator call at", f->last_site, what.str(), m);
  record_error(launch, code, &f->ts, m.str());
}

// ---- the per-block scheduler ------------------------------------------------------------------------

static void resume(Worker* w, Fiber* f) {
  t_fiber = f;
  w->running = f;
  w->in_fiber = 1;
  context_switch(&w->sched, &f->ctx);
  w->in_fiber = 0;
  t_fiber = nullptr;
}

static void init_block(Worker* w, uint64_t linear_block) {
  const sa_emu_launch_config& cfg = w->launch->cfg;
  const uint64_t gx = cfg.grid[0], gy = cfg.grid[1];
  w->block_idx = Dim3{static_cast<unsigned>(linear_block % gx),
                      static_cast<unsigned>((linear_block / gx) % gy),
                      static_cast<unsigned>(linear_block / (gx * gy))};
  const Dim3 bdim{cfg.block[0], cfg.block[1], cfg.block[2]};
  const Dim3 gdim{cfg.grid[0], cfg.grid[1], cfg.grid[2]};
  for (unsigned tid = 0; tid < w->nthreads; ++tid) {
    Fiber& f = w->fibers[tid];
    f.ts.thread_idx = Dim3{tid % bdim.x, (tid / bdim.x) % bdim.y, tid / (bdim.x * bdim.y)};
    f.ts.block_idx = w->block_idx;
    f.ts.block_dim = bdim;
    f.ts.grid_dim = gdim;
    f.ts.linear_tid = tid;
    f.ts.lane = tid % kWarpSize;
    f.ts.warp = tid / kWarpSize;
    f.state = FiberState::Runnable;
    f.wait = WaitKind::None;
    f.last_site = Site{"", 0};
    f.coll_slot = -1;
    f.copies.clear();
    f.copies_head = 0;
    f.groups_committed = 0;
    f.groups_landed = 0;
    f.syncwarps = 0;
    context_init(&f.ctx, w->stacks.stack_lo(tid), StackPool::kUsable, &fiber_main, &f);
  }
  w->live = w->nthreads;
  w->first_exited = -1;
  w->bar_arrived = 0;
  reset_warps(w);
  reset_shadow(w);
  uint64_t s = w->launch->cfg.seed ^ (linear_block * 0xd1b54a32d192ed03ull);
  w->rng = splitmix64(s);
}

// Runs one block to completion. Returns false if the launch failed (here or elsewhere).
static bool run_block(Worker* w, uint64_t linear_block) {
  Launch* launch = w->launch;
  init_block(w, linear_block);
  if (sigsetjmp(w->jmp, 1) != 0) {
    // A fiber faulted; the signal handler jumped here. That fiber is abandoned.
    w->in_fiber = 0;
    t_fiber = nullptr;
    report_fault(w);
    return false;
  }
  const bool random = launch->cfg.schedule == SA_EMU_SCHEDULE_RANDOM;
  uint16_t* order = w->order.data();
  const unsigned n = w->nthreads;
  for (;;) {
    if (random) {
      for (unsigned i = n - 1; i > 0; --i) {
        const unsigned j = static_cast<unsigned>(splitmix64(w->rng) % (i + 1));
        std::swap(order[i], order[j]);
      }
    }
    bool ran = false;
    for (unsigned k = 0; k < n; ++k) {
      Fiber* f = &w->fibers[order[k]];
      if (f->state != FiberState::Runnable) continue;
      resume(w, f);
      ran = true;
      if (launch->failed.load(std::memory_order_relaxed)) return false;
    }
    if (w->live == 0) return true;
    if (!ran) {
      // Nothing can run and some threads have not exited: deadlock.
      const Fiber* first = nullptr;
      for (unsigned i = 0; i < n && first == nullptr; ++i) {
        if (w->fibers[i].state == FiberState::Blocked) first = &w->fibers[i];
      }
      Msg what;
      const bool barrier = w->bar_arrived > 0;
      what.add("deadlock: no emulated thread of the block can make progress (%s); blocked "
               "threads:",
               barrier ? "threads wait at __syncthreads for threads that wait elsewhere"
                       : "warp collectives wait for lanes that never arrive");
      list_blocked(w, what, nullptr, Site{"", 0});
      Msg m;
      compose(launch, first, "first blocked thread waits at", first->wait_site, what.str(), m);
      record_error(launch, barrier ? SA_EMU_ERR_BARRIER : SA_EMU_ERR_WARP, &first->ts, m.str());
      return false;
    }
  }
}

static bool setup_worker(Worker* w) {
  Launch* launch = w->launch;
  w->nthreads = launch->block_threads;
  w->nwarps = (w->nthreads + kWarpSize - 1) / kWarpSize;
  w->fibers.resize(w->nthreads);
  for (Fiber& f : w->fibers) f.worker = w;
  w->warps.resize(w->nwarps);
  w->order.resize(w->nthreads);
  for (unsigned i = 0; i < w->nthreads; ++i) {
    w->order[i] = static_cast<uint16_t>(
        launch->cfg.schedule == SA_EMU_SCHEDULE_REVERSE ? w->nthreads - 1 - i : i);
  }
  if (!w->stacks.ensure(w->nthreads)) return false;
  const size_t smem = launch->cfg.dynamic_smem_bytes;
  if (!w->smem.init(smem)) return false;
  w->sh_state.assign(smem, 0);
  w->sh_info.assign(smem, 0);
  w->sh_reader.assign(smem, 0);
  w->sh_read_lanes.assign(smem, 0);
  w->sh_read_sync.assign(smem, 0);
  w->warp_syncs.assign(w->nwarps, 0);
  return true;
}

static void worker_main(Worker* w) {
  Launch* launch = w->launch;
  t_worker = w;
  // The fault handler runs on this stack, so faults on exhausted fiber stacks are caught too.
  const size_t alt_size = 64 * 1024;
  void* alt = mmap(nullptr, alt_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  stack_t ss, old_ss;
  bool alt_ok = false;
  if (alt != MAP_FAILED) {
    memset(&ss, 0, sizeof(ss));
    ss.ss_sp = alt;
    ss.ss_size = alt_size;
    ss.ss_flags = 0;
    alt_ok = sigaltstack(&ss, &old_ss) == 0;
  }
  bool ok = alt_ok;
  try {
    ok = ok && setup_worker(w);
  } catch (...) {
    ok = false;
  }
  if (!ok) {
    record_error(launch, SA_EMU_ERR_INTERNAL, nullptr,
                 "emulator: could not set up a worker (out of memory for fiber stacks, shared "
                 "memory or the signal stack)");
  }
  while (ok && !launch->failed.load(std::memory_order_relaxed)) {
    const uint64_t b = launch->next_block.fetch_add(1, std::memory_order_relaxed);
    if (b >= launch->total_blocks) break;
    if (!run_block(w, b)) break;
  }
  if (alt_ok) sigaltstack(&old_ss, nullptr);
  if (alt != MAP_FAILED) munmap(alt, alt_size);
  t_worker = nullptr;
}

// ---- launch -----------------------------------------------------------------------------------------

static int config_error(sa_emu_report* report, const char* name, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int config_error(sa_emu_report* report, const char* name, const char* fmt, ...) {
  Msg m;
  m.add("launch of kernel %s rejected: ", name);
  va_list ap;
  va_start(ap, fmt);
  m.vadd(fmt, ap);
  va_end(ap);
  report->code = SA_EMU_ERR_CONFIG;
  snprintf(report->message, sizeof(report->message), "%s", m.str());
  return SA_EMU_ERR_CONFIG;
}

static int launch_impl(sa_emu_kernel_fn fn, const char* kernel_name,
                       const sa_emu_launch_config* config, const void* params,
                       size_t params_size, sa_emu_report* report) {
  const char* name = kernel_name != nullptr ? kernel_name : "(unnamed kernel)";
  if (fn == nullptr) return config_error(report, name, "the kernel function is null");
  if (config == nullptr) return config_error(report, name, "the launch configuration is null");
  const sa_emu_launch_config& c = *config;
  for (int i = 0; i < 3; ++i) {
    if (c.grid[i] == 0 || c.block[i] == 0) {
      return config_error(report, name, "grid (%u,%u,%u) and block (%u,%u,%u) must be non-zero",
                          c.grid[0], c.grid[1], c.grid[2], c.block[0], c.block[1], c.block[2]);
    }
  }
  const uint64_t threads = uint64_t{c.block[0]} * c.block[1] * c.block[2];
  if (threads > kMaxBlockThreads || c.block[2] > 64) {
    return config_error(report, name,
                        "block (%u,%u,%u) has %llu threads; at most %u per block and "
                        "blockDim.z <= 64",
                        c.block[0], c.block[1], c.block[2],
                        static_cast<unsigned long long>(threads), kMaxBlockThreads);
  }
  if (c.grid[0] > 0x7fffffffu || c.grid[1] > 65535 || c.grid[2] > 65535) {
    return config_error(report, name, "grid (%u,%u,%u) exceeds (2^31-1, 65535, 65535)",
                        c.grid[0], c.grid[1], c.grid[2]);
  }
  const size_t smem_limit = max_dynamic_smem(c.arch);
  if (smem_limit == 0) {
    return config_error(report, name,
                        "unknown target architecture %u (expected 80, 86, 87, 89, 90, 100 or 120)",
                        c.arch);
  }
  if (c.dynamic_smem_bytes > smem_limit) {
    return config_error(report, name,
                        "%u bytes of dynamic shared memory exceed the %zu-byte (%zu KB) limit per "
                        "block of sm_%u",
                        c.dynamic_smem_bytes, smem_limit, smem_limit / 1024, c.arch);
  }
  if (c.numerics > SA_EMU_NUMERICS_PESSIMISTIC) {
    return config_error(report, name, "unknown numerics mode %u", c.numerics);
  }
  if (c.schedule > SA_EMU_SCHEDULE_RANDOM) {
    return config_error(report, name, "unknown schedule %u", c.schedule);
  }
  if (c.eager_cp_async > 1) {
    return config_error(report, name, "eager_cp_async must be 0 or 1 (got %u)", c.eager_cp_async);
  }
  if (params_size > kMaxParamsBytes || (params_size > 0 && params == nullptr)) {
    return config_error(report, name, "params of %zu bytes at %p (at most %zu bytes, non-null)",
                        params_size, params, kMaxParamsBytes);
  }

  Launch launch;
  launch.fn = fn;
  launch.name = name;
  launch.cfg = c;
  launch.params.resize((params_size + sizeof(max_align_t) - 1) / sizeof(max_align_t) + 1);
  if (params_size > 0) memcpy(launch.params.data(), params, params_size);
  launch.buffers = snapshot_buffers();
  launch.block_threads = static_cast<unsigned>(threads);
  launch.total_blocks = uint64_t{c.grid[0]} * c.grid[1] * c.grid[2];
  install_fault_handlers();

  uint64_t nworkers = c.workers != 0 ? c.workers : std::max(1u, std::thread::hardware_concurrency());
  nworkers = std::min<uint64_t>({nworkers, launch.total_blocks, 256});
  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<std::thread> threads_;
  for (uint64_t i = 0; i < nworkers; ++i) {
    workers.push_back(std::make_unique<Worker>());
    workers.back()->launch = &launch;
  }
  try {
    for (auto& w : workers) threads_.emplace_back(worker_main, w.get());
  } catch (...) {
    record_error(&launch, SA_EMU_ERR_INTERNAL, nullptr, "emulator: could not start worker threads");
  }
  for (std::thread& t : threads_) t.join();
  *report = launch.report;
  return report->code;
}

}  // namespace detail

// ---- runtime.h ------------------------------------------------------------------------------------

const ThreadState& this_thread() { return detail::current_fiber("threadIdx/blockIdx")->ts; }

char* dynamic_smem() { return detail::current_fiber("dynamic_smem")->worker->smem.base(); }

size_t dynamic_smem_size() {
  return detail::current_fiber("dynamic_smem_size")->worker->smem.size();
}

void syncthreads(Site site) {
  using namespace detail;
  Fiber* f = current_fiber("__syncthreads");
  f->last_site = site;
  Worker* w = f->worker;
  if (w->bar_arrived > 0 && !same_site(w->bar_site, site)) {
    Msg what;
    what.add("divergent __syncthreads: threads of the block wait at different barriers (a "
             "barrier in non-uniform control flow); waiting threads:");
    list_blocked(w, what, f, site);
    fail(f, SA_EMU_ERR_BARRIER, f, site, what);
  }
  if (w->first_exited >= 0) {
    Msg what;
    what.add("__syncthreads reached after ");
    describe_thread(&w->fibers[static_cast<unsigned>(w->first_exited)], what);
    what.add(" of the block exited (at %s:%d) without reaching it: a barrier skipped by an "
             "early return",
             w->fibers[static_cast<unsigned>(w->first_exited)].last_site.file,
             w->fibers[static_cast<unsigned>(w->first_exited)].last_site.line);
    fail(f, SA_EMU_ERR_BARRIER, f, site, what);
  }
  if (w->bar_arrived == 0) w->bar_site = site;
  ++w->bar_arrived;
  if (w->bar_arrived == w->live) {
    complete_barrier(w);
    return;
  }
  block_on(f, WaitKind::Barrier, site);
}

void trap(const char* message, Site site) {
  using namespace detail;
  Fiber* f = current_fiber("trap");
  Msg what;
  what.add("trap: %s", message != nullptr ? message : "(no message)");
  fail(f, SA_EMU_ERR_TRAP, f, site, what);
}

}  // namespace emu
}  // namespace sa

extern "C" int32_t sa_emu_launch(sa_emu_kernel_fn fn, const char* kernel_name,
                                 const sa_emu_launch_config* config, const void* params,
                                 size_t params_size, sa_emu_report* report) {
  sa_emu_report local;
  if (report == nullptr) report = &local;
  memset(report, 0, sizeof(*report));
  try {
    return sa::emu::detail::launch_impl(fn, kernel_name, config, params, params_size, report);
  } catch (const std::exception& e) {
    report->code = SA_EMU_ERR_INTERNAL;
    snprintf(report->message, sizeof(report->message), "emulator: %s", e.what());
  } catch (...) {
    report->code = SA_EMU_ERR_INTERNAL;
    snprintf(report->message, sizeof(report->message), "emulator: unknown exception");
  }
  return report->code;
}

static_assert(sizeof(sa_emu_launch_config) == 56, "sa_emu_launch_config layout (mirrored in Rust)");
static_assert(sizeof(sa_emu_report) == 2076, "sa_emu_report layout (mirrored in Rust)");
