// cp.async (issue, commit_group, wait_group) and the shadow state of shared memory behind the
// checked reads. See internal.h for the design and docs/emulator.md §3 for the semantics.
#include <string.h>

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
  what.add("missing __syncthreads after cp.async wait: %s reads shared bytes [%u, %u); byte "
           "%u was filled by the cp.async issued at %s:%d, which landed in the "
           "cp_async_wait of ",
           what_op, off, off + len, byte, l.issue_site.file, l.issue_site.line);
  describe_tid(w, l.owner, what);
  what.add(" at %s:%d, and no __syncthreads has completed since, so other threads may not "
           "read it yet",
           l.wait_site.file, l.wait_site.line);
  fail(self, SA_EMU_ERR_CP_ASYNC, who, site, what);
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
  }
  w->landed.clear();
  w->read_ranges.clear();
}

void publish_at_barrier(Worker* w) {
  for (const Landed& l : w->landed) {
    for (uint32_t i = l.off; i < l.off + l.len; ++i) {
      if (w->sh_state[i] == kLanded) w->sh_state[i] = kClean;
    }
  }
  w->landed.clear();
  for (const Range& r : w->read_ranges) memset(&w->sh_reader[r.off], 0, r.len);
  w->read_ranges.clear();
}

void publish_at_syncwarp(Worker* w, unsigned warp, uint32_t mask) {
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
    if (st[i] == kClean) continue;
    if (st[i] == kPending) report_pending_read(self, who, off, len, off + i, site, what);
    const Landed& l = w->landed[w->sh_info[off + i]];
    if (l.owner / kWarpSize != warp || (lanes & ~l.visible) != 0) {
      report_unpublished_read(self, who, off, len, off + i, site, what);
    }
  }
  uint8_t* rd = w->sh_reader.data() + off;
  const uint8_t tag = static_cast<uint8_t>(warp + 1);
  bool fresh = false;
  for (uint32_t i = 0; i < len; ++i) {
    if (rd[i] == 0) {
      rd[i] = tag;
      fresh = true;
    } else if (rd[i] != tag) {
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
  const uint8_t tag = static_cast<uint8_t>(f->ts.warp + 1);
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
    const uint8_t r = w->sh_reader[i];
    if (r != 0 && r != tag) {
      Msg what;
      what.add("write-after-read race: this cp.async overwrites shared byte %u, which ", i);
      if (r == kReadByMany) {
        what.add("several warps");
      } else {
        what.add("warp %u", static_cast<unsigned>(r - 1));
      }
      what.add(" read since the last __syncthreads; a barrier must separate the last read of "
               "a buffer from the cp.async prefetch that refills it");
      fail(f, SA_EMU_ERR_CP_ASYNC, f, site, what);
    }
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

void check_shared_read(const void* addr, size_t bytes, Site site) {
  using namespace detail;
  Fiber* f = current_fiber("shared-memory read check");
  f->last_site = site;
  Worker* w = f->worker;
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  const uintptr_t base = reinterpret_cast<uintptr_t>(w->smem.base());
  const size_t size = w->smem.size();
  if (a < base || a - base > size || bytes > size - (a - base)) {
    Msg what;
    what.add("out-of-bounds shared memory read of %zu bytes at 0x%zx: byte offset %lld of the "
             "block's dynamic shared memory, which has %zu bytes",
             bytes, static_cast<size_t>(a),
             static_cast<long long>(static_cast<int64_t>(a - base)), size);
    fail(f, SA_EMU_ERR_OUT_OF_BOUNDS, f, site, what);
  }
  check_and_record_read(f, f, static_cast<uint32_t>(a - base), static_cast<uint32_t>(bytes),
                        f->ts.warp, 1u << f->ts.lane, site, "a shared-memory load");
}

}  // namespace emu
}  // namespace sa
