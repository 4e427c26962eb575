// cp.async (issue, commit_group, wait_group) and the shadow state of shared memory behind the
// checked reads. See internal.h for the design and docs/emulator.md §3 for the semantics.
#include <string.h>

#include <algorithm>

#include "internal.h"

namespace sa {
namespace emu {
namespace detail {

namespace {

// The not-yet-landed copy of thread `tid` that covers shared byte `off`, or null.
const PendingCopy* find_pending(const Worker* w, uint32_t tid, uint32_t off) {
  if (tid >= w->nthreads) return nullptr;
  const Fiber& f = w->fibers[tid];
  for (size_t i = f.copies_head; i < f.copies.size(); ++i) {
    const PendingCopy& c = f.copies[i];
    if (off >= c.dst_off && off < c.dst_off + c.cp_size) return &c;
  }
  return nullptr;
}

void describe_tid(const Worker* w, uint32_t tid, Msg& m) {
  if (tid < w->nthreads) {
    describe_thread(&w->fibers[tid], m);
  } else {
    m.add("thread %u", tid);
  }
}

[[noreturn]] void report_pending_read(Fiber* self, const Fiber* who, uint32_t off, uint32_t len,
                                      uint32_t byte, Site site, const char* what_op) {
  Worker* w = self->worker;
  const uint32_t issuer = w->sh_info[byte];
  Msg what;
  what.add("read of cp.async destination before its wait_group: %s reads shared bytes "
           "[%u, %u), but byte %u is still in flight from the cp.async issued by ",
           what_op, off, off + len, byte);
  describe_tid(w, issuer, what);
  const PendingCopy* c = find_pending(w, issuer, byte);
  if (c != nullptr) {
    const Fiber& f = w->fibers[issuer];
    what.add(" at %s:%d (commit group %u; that thread has %s)", c->site.file, c->site.line,
             c->group,
             c->group >= f.groups_committed ? "not committed it yet"
                                            : "not waited for it: cp_async_wait<N> with N too "
                                              "large, or no wait at all");
  }
  fail(self, SA_EMU_ERR_CP_ASYNC, who, site, what);
}

[[noreturn]] void report_unpublished_read(Fiber* self, const Fiber* who, uint32_t off,
                                          uint32_t len, uint32_t byte, Site site,
                                          const char* what_op) {
  Worker* w = self->worker;
  const Landed& l = w->landed[w->sh_info[byte]];
  Msg what;
  what.add("missing __syncthreads after cp.async wait: %s accesses shared bytes [%u, %u); byte "
           "%u was filled by the cp.async issued at %s:%d, which landed in the "
           "cp_async_wait of ",
           what_op, off, off + len, byte, l.issue_site.file, l.issue_site.line);
  describe_tid(w, l.owner, what);
  what.add(" at %s:%d, and no __syncthreads has completed since, so other threads may not "
           "touch it yet",
           l.wait_site.file, l.wait_site.line);
  fail(self, SA_EMU_ERR_CP_ASYNC, who, site, what);
}

// Whether a plain store of thread `writer` (recorded with its __syncwarp count `epoch`) is
// visible to lanes `lanes` of warp `warp`: always to the writer itself; to other lanes of its
// warp once the writer has completed a __syncwarp since; to other warps only after a
// __syncthreads (which turns the byte clean).
bool store_visible(const Worker* w, uint32_t writer, uint32_t epoch, unsigned warp,
                   uint32_t lanes) {
  if (writer / kWarpSize != warp) return false;
  if (lanes == (1u << (writer % kWarpSize))) return true;
  return w->fibers[writer].syncwarps != epoch;
}

[[noreturn]] void report_store_race(Fiber* self, const Fiber* who, uint32_t off, uint32_t len,
                                    uint32_t byte, Site site, const char* what_op) {
  Worker* w = self->worker;
  const uint32_t writer = w->sh_info[byte] & kStoreTidMask;
  Msg what;
  what.add("shared-memory race: %s accesses shared bytes [%u, %u), but byte %u was stored by ",
           what_op, off, off + len, byte);
  describe_tid(w, writer, what);
  if (writer < w->nthreads) {
    const Site& ws = w->fibers[writer].last_site;
    what.add(" (its latest emulator call: %s:%d)", ws.file, ws.line);
  }
  what.add(" with no __syncthreads since%s", writer / kWarpSize == self->ts.warp
                                                   ? " and no __syncwarp by the storing thread"
                                                   : "");
  fail(self, SA_EMU_ERR_RACE, who, site, what);
}

// A write by thread `f` over shared byte `i`: reports it when another warp read the byte since
// the last barrier, or another lane of f's warp since the warp's latest __syncwarp.
void check_write_after_read(Fiber* f, uint32_t i, Site site, const char* what_op, int code) {
  Worker* w = f->worker;
  const uint8_t r = w->sh_reader[i];
  if (r == 0) return;
  const uint8_t tag = static_cast<uint8_t>(f->ts.warp + 1);
  const bool other_lanes = r == tag && w->sh_read_sync[i] == w->warp_syncs[f->ts.warp] &&
                           (w->sh_read_lanes[i] & ~(1u << f->ts.lane)) != 0;
  if (r == tag && !other_lanes) return;
  Msg what;
  what.add("write-after-read race: %s overwrites shared byte %u, which ", what_op, i);
  if (r == kReadByMany) {
    what.add("several warps");
  } else if (r != tag) {
    what.add("warp %u", static_cast<unsigned>(r - 1));
  } else {
    what.add("other lanes of this warp (mask 0x%08x)", w->sh_read_lanes[i]);
  }
  what.add(" read since the last __syncthreads%s; a barrier must separate the last read of the "
           "bytes from the write that replaces them",
           r == tag ? " and __syncwarp" : "");
  fail(f, code, f, site, what);
}

[[noreturn]] void report_uninitialized(Fiber* self, const Fiber* who, uint32_t off, uint32_t len,
                                       uint32_t byte, Site site, const char* what_op) {
  Msg what;
  what.add("uninitialised shared memory: %s reads shared bytes [%u, %u), but no thread of the "
           "block has written byte %u (by cp.async or a store) since the block started",
           what_op, off, off + len, byte);
  fail(self, SA_EMU_ERR_UNINITIALIZED, who, site, what);
}

void land(Worker* w, Fiber* f, const PendingCopy& c, Site wait_site) {
  if (c.eager) return;  // copied (and marked landed) at issue
  char* dst = w->smem.base() + c.dst_off;
  if (c.src_size > 0) memcpy(dst, c.src, c.src_size);
  memset(dst + c.src_size, 0, static_cast<size_t>(c.cp_size - c.src_size));
  const uint32_t idx = static_cast<uint32_t>(w->landed.size());
  w->landed.push_back(
      Landed{c.dst_off, c.cp_size, f->ts.linear_tid, 1u << f->ts.lane, c.site, wait_site});
  for (uint32_t i = c.dst_off; i < c.dst_off + c.cp_size; ++i) {
    w->sh_state[i] = kLanded;
    w->sh_info[i] = idx;
  }
}

}  // namespace

void reset_shadow(Worker* w) {
  memset(w->smem.base(), kPoisonByte, w->smem.padded());
  const size_t n = w->smem.size();
  if (n > 0) {
    memset(w->sh_state.data(), 0, n);
    memset(w->sh_reader.data(), 0, n);
    memset(w->sh_read_lanes.data(), 0, n * sizeof(uint32_t));
  }
  std::fill(w->warp_syncs.begin(), w->warp_syncs.end(), 0u);
  w->landed.clear();
  w->read_ranges.clear();
  w->store_ranges.clear();
}

void publish_at_barrier(Worker* w) {
  for (const Landed& l : w->landed) {
    for (uint32_t i = l.off; i < l.off + l.len; ++i) {
      if (w->sh_state[i] == kLanded) w->sh_state[i] = kClean;
    }
  }
  w->landed.clear();
  for (const Range& r : w->read_ranges) {
    memset(&w->sh_reader[r.off], 0, r.len);
    memset(&w->sh_read_lanes[r.off], 0, r.len * sizeof(uint32_t));
  }
  w->read_ranges.clear();
  for (const Range& r : w->store_ranges) {
    for (uint32_t i = r.off; i < r.off + r.len; ++i) {
      if (w->sh_state[i] == kStored) w->sh_state[i] = kClean;
    }
  }
  w->store_ranges.clear();
}

void publish_at_syncwarp(Worker* w, unsigned warp, uint32_t mask) {
  ++w->warp_syncs[warp];
  for (unsigned lane = 0; lane < kWarpSize; ++lane) {
    const unsigned tid = warp * kWarpSize + lane;
    if (((mask >> lane) & 1u) != 0 && tid < w->nthreads) ++w->fibers[tid].syncwarps;
  }
  for (Landed& l : w->landed) {
    if (l.owner / kWarpSize == warp && ((mask >> (l.owner % kWarpSize)) & 1u) != 0) {
      l.visible |= mask;
    }
  }
}

void check_and_record_read(Fiber* self, const Fiber* who, uint32_t off, uint32_t len,
                           unsigned warp, uint32_t lanes, Site site, const char* what) {
  Worker* w = self->worker;
  const uint8_t* st = w->sh_state.data() + off;
  for (uint32_t i = 0; i < len; ++i) {
    switch (st[i]) {
      case kClean:
        continue;
      case kUninit:
        report_uninitialized(self, who, off, len, off + i, site, what);
      case kPending:
        report_pending_read(self, who, off, len, off + i, site, what);
      case kStored: {
        const uint32_t info = w->sh_info[off + i];
        if (!store_visible(w, info & kStoreTidMask, info >> kStoreTidBits, warp, lanes)) {
          report_store_race(self, who, off, len, off + i, site, what);
        }
        continue;
      }
      default: {
        const Landed& l = w->landed[w->sh_info[off + i]];
        if (l.owner / kWarpSize != warp || (lanes & ~l.visible) != 0) {
          report_unpublished_read(self, who, off, len, off + i, site, what);
        }
      }
    }
  }
  uint8_t* rd = w->sh_reader.data() + off;
  uint32_t* rl = w->sh_read_lanes.data() + off;
  uint32_t* rs = w->sh_read_sync.data() + off;
  const uint8_t tag = static_cast<uint8_t>(warp + 1);
  const uint32_t sync = w->warp_syncs[warp];
  bool fresh = false;
  for (uint32_t i = 0; i < len; ++i) {
    if (rd[i] == 0) {
      rd[i] = tag;
      rl[i] = lanes;
      rs[i] = sync;
      fresh = true;
    } else if (rd[i] == tag) {
      rl[i] = rs[i] == sync ? rl[i] | lanes : lanes;
      rs[i] = sync;
    } else {
      rd[i] = kReadByMany;
    }
  }
  if (fresh) w->read_ranges.push_back(Range{off, len});
}

void check_copies_at_exit(Fiber* f) {
  if (f->copies_head == f->copies.size()) return;
  const PendingCopy& c = f->copies[f->copies_head];
  Msg what;
  what.add("thread exited with %zu cp.async cop%s still pending; the first was issued at %s:%d "
           "and %s",
           f->copies.size() - f->copies_head, f->copies.size() - f->copies_head == 1 ? "y" : "ies",
           c.site.file, c.site.line,
           c.group >= f->groups_committed
               ? "never committed (cp_async_commit) nor waited for"
               : "committed but never waited for (cp_async_wait)");
  fail(f, SA_EMU_ERR_CP_ASYNC, f, c.site, what);
}

}  // namespace detail

// ---- runtime.h ------------------------------------------------------------------------------------

void cp_async(CacheOp op, void* smem_dst, const void* gmem_src, int cp_size, int src_size,
              Site site) {
  using namespace detail;
  Fiber* f = current_fiber("cp.async");
  f->last_site = site;
  Worker* w = f->worker;
  const char* opname = op == CacheOp::CG ? "cp.async.cg" : "cp.async.ca";
  if (cp_size != 4 && cp_size != 8 && cp_size != 16) {
    Msg what;
    what.add("%s: cp-size must be 4, 8 or 16 bytes (got %d)", opname, cp_size);
    fail(f, SA_EMU_ERR_CP_ASYNC, f, site, what);
  }
  if (op == CacheOp::CG && cp_size != 16) {
    Msg what;
    what.add("cp.async.cg with cp-size %d: .cg only supports 16-byte copies (use .ca for 4 and "
             "8)",
             cp_size);
    fail(f, SA_EMU_ERR_CP_ASYNC, f, site, what);
  }
  if (src_size < 0 || src_size > cp_size) {
    Msg what;
    what.add("%s: src-size %d outside [0, cp-size %d]", opname, src_size, cp_size);
    fail(f, SA_EMU_ERR_CP_ASYNC, f, site, what);
  }
  const uintptr_t dst = reinterpret_cast<uintptr_t>(smem_dst);
  const uintptr_t src = reinterpret_cast<uintptr_t>(gmem_src);
  if (dst % static_cast<uintptr_t>(cp_size) != 0 ||
      (src_size > 0 && src % static_cast<uintptr_t>(cp_size) != 0)) {
    Msg what;
    what.add("misaligned %s of %d bytes: destination 0x%zx, source 0x%zx (both must be %d-byte "
             "aligned)",
             opname, cp_size, static_cast<size_t>(dst), static_cast<size_t>(src), cp_size);
    fail(f, SA_EMU_ERR_MISALIGNED, f, site, what);
  }
  const uintptr_t base = reinterpret_cast<uintptr_t>(w->smem.base());
  const size_t size = w->smem.size();
  if (dst < base || dst - base >= size || size - (dst - base) < static_cast<size_t>(cp_size)) {
    Msg what;
    what.add("%s destination 0x%zx (%d bytes) is outside the block's dynamic shared memory "
             "[0x%zx, +%zu bytes)",
             opname, static_cast<size_t>(dst), cp_size, static_cast<size_t>(base), size);
    fail(f, SA_EMU_ERR_OUT_OF_BOUNDS, f, site, what);
  }
  if (src_size == 0 && (src == 0 || src % static_cast<uintptr_t>(cp_size) != 0 ||
                        find_buffer(w->launch->buffers, src, 0) == nullptr)) {
    Msg what;
    what.add("%s with src-size 0: the source 0x%zx is never read, but must still be a %d-byte "
             "aligned address inside a sa_emu_alloc buffer (pass the tensor's base for a "
             "predicated-off row, not nullptr or a pointer past the end)",
             opname, static_cast<size_t>(src), cp_size);
    fail(f, src == 0 || find_buffer(w->launch->buffers, src, 0) == nullptr
                ? SA_EMU_ERR_OUT_OF_BOUNDS
                : SA_EMU_ERR_MISALIGNED,
         f, site, what);
  }
  if (src_size > 0 &&
      find_buffer(w->launch->buffers, src, static_cast<size_t>(src_size)) == nullptr) {
    Msg what;
    what.add("%s source [0x%zx, +%d bytes) is not inside one sa_emu_alloc buffer: ", opname,
             static_cast<size_t>(src), src_size);
    describe_global_address(w->launch->buffers, src + static_cast<uintptr_t>(src_size) - 1, what);
    what.add(" (last source byte)");
    fail(f, SA_EMU_ERR_OUT_OF_BOUNDS, f, site, what);
  }
  const uint32_t off = static_cast<uint32_t>(dst - base);
  const uint32_t tid = f->ts.linear_tid;
  for (uint32_t i = off; i < off + static_cast<uint32_t>(cp_size); ++i) {
    if (w->sh_state[i] == kPending) {
      const uint32_t other = w->sh_info[i];
      Msg what;
      what.add("overlapping cp.async destinations in flight: shared byte %u is also the "
               "destination of a cp.async issued by ",
               i);
      describe_tid(w, other, what);
      const PendingCopy* c = find_pending(w, other, i);
      if (c != nullptr) what.add(" at %s:%d", c->site.file, c->site.line);
      what.add(" that has not landed yet");
      fail(f, SA_EMU_ERR_CP_ASYNC, f, site, what);
    }
    if (w->sh_state[i] == kStored) {
      const uint32_t info = w->sh_info[i];
      if (!store_visible(w, info & kStoreTidMask, info >> kStoreTidBits, f->ts.warp,
                         1u << f->ts.lane)) {
        report_store_race(f, f, off, static_cast<uint32_t>(cp_size), i, site, "this cp.async");
      }
    }
    check_write_after_read(f, i, site, "this cp.async", SA_EMU_ERR_CP_ASYNC);
  }
  PendingCopy c{off, static_cast<uint8_t>(cp_size), static_cast<uint8_t>(src_size),
                w->launch->cfg.eager_cp_async != 0, f->groups_committed, gmem_src, site};
  char* d = w->smem.base() + off;
  if (c.eager) {
    if (src_size > 0) memcpy(d, gmem_src, static_cast<size_t>(src_size));
    memset(d + src_size, 0, static_cast<size_t>(cp_size - src_size));
    const uint32_t idx = static_cast<uint32_t>(w->landed.size());
    w->landed.push_back(Landed{off, c.cp_size, tid, 1u << f->ts.lane, site, site});
    for (uint32_t i = off; i < off + c.cp_size; ++i) {
      w->sh_state[i] = kLanded;
      w->sh_info[i] = idx;
    }
  } else {
    memset(d, kPoisonByte, static_cast<size_t>(cp_size));
    for (uint32_t i = off; i < off + c.cp_size; ++i) {
      w->sh_state[i] = kPending;
      w->sh_info[i] = tid;
    }
  }
  f->copies.push_back(c);
}

void cp_async_commit(Site site) {
  detail::Fiber* f = detail::current_fiber("cp.async.commit_group");
  f->last_site = site;
  ++f->groups_committed;
}

void cp_async_wait(int n, Site site) {
  using namespace detail;
  Fiber* f = current_fiber("cp.async.wait_group");
  f->last_site = site;
  Worker* w = f->worker;
  if (n < 0) {
    Msg what;
    what.add("cp.async.wait_group %d: N must be non-negative", n);
    fail(f, SA_EMU_ERR_CP_ASYNC, f, site, what);
  }
  // Land the oldest groups until at most n committed groups remain in flight.
  while (f->groups_committed - f->groups_landed > static_cast<uint32_t>(n)) {
    const uint32_t g = f->groups_landed;
    while (f->copies_head < f->copies.size() && f->copies[f->copies_head].group == g) {
      land(w, f, f->copies[f->copies_head], site);
      ++f->copies_head;
    }
    ++f->groups_landed;
  }
  if (f->copies_head == f->copies.size()) {
    f->copies.clear();
    f->copies_head = 0;
  }
  yield(f);  // a scheduling point: other threads may run between the wait and what follows
}

void shared_access(const void* addr, size_t bytes, size_t align, bool write, Site site) {
  using namespace detail;
  Fiber* f = current_fiber(write ? "shared-memory store" : "shared-memory load");
  f->last_site = site;
  Worker* w = f->worker;
  const char* op = write ? "store" : "load";
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  const uintptr_t base = reinterpret_cast<uintptr_t>(w->smem.base());
  const size_t size = w->smem.size();
  if (a < base || a - base > size || bytes > size - (a - base)) {
    Msg what;
    what.add("out-of-bounds shared memory %s of %zu bytes at 0x%zx: byte offset %lld of the "
             "block's dynamic shared memory, which has %zu bytes",
             op, bytes, static_cast<size_t>(a),
             static_cast<long long>(static_cast<int64_t>(a - base)), size);
    fail(f, SA_EMU_ERR_OUT_OF_BOUNDS, f, site, what);
  }
  if (align > 1 && a % align != 0) {
    Msg what;
    what.add("misaligned shared memory %s of %zu bytes at byte offset %zu (must be %zu-byte "
             "aligned)",
             op, bytes, static_cast<size_t>(a - base), align);
    fail(f, SA_EMU_ERR_MISALIGNED, f, site, what);
  }
  const uint32_t off = static_cast<uint32_t>(a - base), len = static_cast<uint32_t>(bytes);
  if (!write) {
    check_and_record_read(f, f, off, len, f->ts.warp, 1u << f->ts.lane, site,
                          "a shared-memory load");
    return;
  }
  const uint32_t tid = f->ts.linear_tid;
  for (uint32_t i = off; i < off + len; ++i) {
    switch (w->sh_state[i]) {
      case kPending: {
        Msg what;
        what.add("store to shared byte %u while a cp.async to it is in flight (issued by ", i);
        describe_tid(w, w->sh_info[i], what);
        what.add("); the store races with the copy landing");
        fail(f, SA_EMU_ERR_CP_ASYNC, f, site, what);
      }
      case kLanded:
        if (w->landed[w->sh_info[i]].owner != tid) {
          report_unpublished_read(f, f, off, len, i, site, "a shared-memory store");
        }
        break;
      case kStored: {
        const uint32_t info = w->sh_info[i];
        if ((info & kStoreTidMask) != tid &&
            !store_visible(w, info & kStoreTidMask, info >> kStoreTidBits, f->ts.warp,
                           1u << f->ts.lane)) {
          report_store_race(f, f, off, len, i, site, "a shared-memory store");
        }
        break;
      }
      default:
        break;
    }
    check_write_after_read(f, i, site, "a shared-memory store", SA_EMU_ERR_RACE);
  }
  const uint32_t info = tid | (f->syncwarps << kStoreTidBits);
  bool fresh = false;
  for (uint32_t i = off; i < off + len; ++i) {
    fresh |= w->sh_state[i] != kStored;
    w->sh_state[i] = kStored;
    w->sh_info[i] = info;
  }
  if (fresh) w->store_ranges.push_back(Range{off, len});
}

void global_access(const void* addr, size_t bytes, size_t align, Site site) {
  using namespace detail;
  Fiber* f = current_fiber("global vector access");
  f->last_site = site;
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  if (align > 1 && a % align != 0) {
    Msg what;
    what.add("misaligned global vector access of %zu bytes at 0x%zx (must be %zu-byte aligned; "
             "the GPU faults on it): ",
             bytes, static_cast<size_t>(a), align);
    describe_global_address(f->worker->launch->buffers, a, what);
    fail(f, SA_EMU_ERR_MISALIGNED, f, site, what);
  }
}

}  // namespace emu
}  // namespace sa
