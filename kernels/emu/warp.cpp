// Warp collectives: the rendezvous, shuffles, __syncwarp, mma and ldmatrix. See internal.h for
// the emulator's design and docs/emulator.md §1, §2 and §4 for the semantics reproduced here.
#include <string.h>

#include <algorithm>

#include "internal.h"
#include "sparse_attn/arch/numeric.cuh"

namespace sa {
namespace emu {
namespace detail {

namespace {

constexpr uint8_t kMmaBf16 = 1;  // Collective::sub bits for mma
constexpr uint8_t kMmaK8 = 2;
constexpr uint8_t kLdsmTrans = 8;  // Collective::sub for ldmatrix: num | trans

bool needs_all_lanes(CollOp op) { return op == CollOp::Mma || op == CollOp::Ldmatrix; }

const char* shfl_mode_name(int mode) {
  switch (mode) {
    case 0: return "idx";
    case 1: return "up";
    case 2: return "down";
    default: return "bfly";
  }
}

// Lanes of `bits` as "0-15, 17".
void add_lanes(Msg& m, uint32_t bits) {
  unsigned ids[kWarpSize];
  size_t n = 0;
  for (unsigned l = 0; l < kWarpSize; ++l) {
    if ((bits >> l) & 1u) ids[n++] = l;
  }
  m.add_id_list(ids, n);
}

Fiber& lane_fiber(Worker* w, unsigned warp, unsigned lane) {
  return w->fibers[warp * kWarpSize + lane];
}

// ---- the computations, run by the lane that completes the collective ---------------------------

void compute_shfl(Worker* w, unsigned warp, const Collective& c) {
  for (unsigned lane = 0; lane < kWarpSize; ++lane) {
    if (((c.arrived >> lane) & 1u) == 0) continue;
    Arrival& a = lane_fiber(w, warp, lane).arrival;
    const int L = static_cast<int>(lane);
    const int bval = a.b & 31;
    const int segmask = (a.c >> 8) & 31;
    const int cval = a.c & 31;
    const int max_lane = (L & segmask) | (cval & ~segmask);
    const int min_lane = L & segmask;
    int j = L;
    bool valid = false;
    switch (static_cast<ShflMode>(a.mode)) {
      case ShflMode::Up:
        j = L - bval;
        valid = j >= max_lane;
        break;
      case ShflMode::Down:
        j = L + bval;
        valid = j <= max_lane;
        break;
      case ShflMode::Bfly:
        j = L ^ bval;
        valid = j <= max_lane;
        break;
      case ShflMode::Idx:
        j = min_lane | (bval & ~segmask);
        valid = j <= max_lane;
        break;
    }
    if (!valid) j = L;
    uint32_t v;
    if (j == L) {
      v = a.value;
    } else if (((c.arrived >> j) & 1u) != 0) {
      v = lane_fiber(w, warp, static_cast<unsigned>(j)).arrival.value;
    } else {
      v = kPoisonWord;  // source lane outside the mask or exited: undefined on the GPU
    }
    a.result = v;
  }
}

template <bool kBf16>
float widen(uint16_t bits) {
  return kBf16 ? arch::bits_float(static_cast<uint32_t>(bits) << 16)
               : arch::f16_bits_to_f32(bits);
}

uint16_t half_of(uint32_t reg, unsigned i) {
  return static_cast<uint16_t>((i & 1u) != 0 ? reg >> 16 : reg & 0xffffu);
}

// Gathers A (16 x K), B (K x 8) and C (16 x 8) from the 32 lanes' fragments, with the exact
// per-lane layouts of PTX mma.m16n8k16 / m16n8k8 (docs/emulator.md §1).
template <bool kBf16, int K>
void gather_mma(Worker* w, unsigned warp, float (&A)[16][16], float (&B)[16][8],
                float (&C)[16][8]) {
  for (unsigned lane = 0; lane < kWarpSize; ++lane) {
    const Arrival& a = lane_fiber(w, warp, lane).arrival;
    const unsigned g = lane >> 2, t = lane & 3;
    for (unsigned i = 0; i < K / 2; ++i) {
      const unsigned row = g + 8 * ((i >> 1) & 1), col = 2 * t + (i & 1) + 8 * (i >> 2);
      A[row][col] = widen<kBf16>(half_of(a.a[i >> 1], i));
    }
    for (unsigned i = 0; i < K / 4; ++i) {
      const unsigned k = 2 * t + (i & 1) + 8 * (i >> 1);
      B[k][g] = widen<kBf16>(half_of(a.bfrag[i >> 1], i));
    }
    for (unsigned i = 0; i < 4; ++i) C[g + 8 * (i >> 1)][2 * t + (i & 1)] = a.cfrag[i];
  }
}

// Writes D back to the lanes' D fragments (the C/D layout).
void scatter_mma(Worker* w, unsigned warp, const float (&D)[16][8]) {
  for (unsigned lane = 0; lane < kWarpSize; ++lane) {
    const Arrival& a = lane_fiber(w, warp, lane).arrival;
    const unsigned g = lane >> 2, t = lane & 3;
    for (unsigned i = 0; i < 4; ++i) a.d[i] = D[g + 8 * (i >> 1)][2 * t + (i & 1)];
  }
}

// D = A.B + C: products accumulated over k in f32, C added last (pessimistic numerics: see
// sa_emu_numerics), then scattered back to the lanes' D fragments. All inputs are gathered
// before any output is written: d may alias c.
void compute_mma(Worker* w, unsigned warp, const Collective& c) {
  const bool bf16 = (c.sub & kMmaBf16) != 0;
  const int K = (c.sub & kMmaK8) != 0 ? 8 : 16;
  float A[16][16], B[16][8], C[16][8];
  if (bf16) {
    if (K == 16) gather_mma<true, 16>(w, warp, A, B, C);
    else gather_mma<true, 8>(w, warp, A, B, C);
  } else {
    if (K == 16) gather_mma<false, 16>(w, warp, A, B, C);
    else gather_mma<false, 8>(w, warp, A, B, C);
  }
  float D[16][8];
  if (w->launch->cfg.numerics == SA_EMU_NUMERICS_PESSIMISTIC) {
    // C first, then the products (exact in f32 for 16-bit inputs) in descending k, every
    // partial sum truncated toward zero.
    for (int m = 0; m < 16; ++m) {
      for (int n = 0; n < 8; ++n) {
        float acc = C[m][n];
        for (int k = K - 1; k >= 0; --k) acc = mma_add(acc, A[m][k] * B[k][n], true);
        D[m][n] = acc;
      }
    }
    scatter_mma(w, warp, D);
    return;
  }
  // Each D[m][n] sums its products in ascending k, then adds C; the two 4-wide vectors only
  // compute the eight n of a row at once (lane-wise, so the result is the scalar one).
  typedef float F4 __attribute__((vector_size(16)));
  for (int m = 0; m < 16; ++m) {
    F4 acc0 = {0.f, 0.f, 0.f, 0.f}, acc1 = {0.f, 0.f, 0.f, 0.f};
    for (int k = 0; k < K; ++k) {
      const float a = A[m][k];
      const F4 av = {a, a, a, a};
      F4 b0, b1;
      memcpy(&b0, &B[k][0], sizeof(b0));
      memcpy(&b1, &B[k][4], sizeof(b1));
      acc0 += av * b0;
      acc1 += av * b1;
    }
    F4 c0, c1;
    memcpy(&c0, &C[m][0], sizeof(c0));
    memcpy(&c1, &C[m][4], sizeof(c1));
    acc0 += c0;
    acc1 += c1;
    memcpy(&D[m][0], &acc0, sizeof(acc0));
    memcpy(&D[m][4], &acc1, sizeof(acc1));
  }
  scatter_mma(w, warp, D);
}

// ldmatrix.m8n8.xN{.trans}.b16 (docs/emulator.md §2): lanes 8m..8m+7 supply the rows of matrix m;
// the other lanes' addresses are never looked at.
void compute_ldmatrix(Fiber* self, unsigned warp, const Collective& c) {
  Worker* w = self->worker;
  const unsigned num = c.sub & 7u;
  const bool trans = (c.sub & kLdsmTrans) != 0;
  const uintptr_t base = reinterpret_cast<uintptr_t>(w->smem.base());
  const size_t size = w->smem.size();
  uint16_t E[4][8][8];
  for (unsigned m = 0; m < num; ++m) {
    for (unsigned r = 0; r < 8; ++r) {
      const Fiber& src = lane_fiber(w, warp, 8 * m + r);
      const uintptr_t addr = reinterpret_cast<uintptr_t>(src.arrival.addr);
      if (addr % 16 != 0) {
        Msg what;
        what.add("misaligned ldmatrix: lane %u supplies row address 0x%zx (row %u of matrix %u), "
                 "which is not 16-byte aligned",
                 8 * m + r, static_cast<size_t>(addr), r, m);
        fail(self, SA_EMU_ERR_MISALIGNED, &src, c.site, what);
      }
      if (addr < base || addr - base >= size || size - (addr - base) < 16) {
        Msg what;
        what.add("out-of-bounds ldmatrix: lane %u supplies row address 0x%zx (row %u of matrix "
                 "%u), outside the block's dynamic shared memory [0x%zx, +%zu bytes)",
                 8 * m + r, static_cast<size_t>(addr), r, m, static_cast<size_t>(base), size);
        fail(self, SA_EMU_ERR_OUT_OF_BOUNDS, &src, c.site, what);
      }
      const uint32_t off = static_cast<uint32_t>(addr - base);
      check_and_record_read(self, &src, off, 16, warp, kFullMask, c.site, "ldmatrix");
      memcpy(E[m][r], reinterpret_cast<const void*>(addr), 16);
    }
  }
  for (unsigned lane = 0; lane < kWarpSize; ++lane) {
    const unsigned g = lane >> 2, t = lane & 3;
    uint32_t* regs = lane_fiber(w, warp, lane).arrival.regs;
    for (unsigned m = 0; m < num; ++m) {
      if (trans) {
        regs[m] = static_cast<uint32_t>(E[m][2 * t][g]) |
                  (static_cast<uint32_t>(E[m][2 * t + 1][g]) << 16);
      } else {
        regs[m] = static_cast<uint32_t>(E[m][lane / 4][2 * t]) |
                  (static_cast<uint32_t>(E[m][lane / 4][2 * t + 1]) << 16);
      }
    }
  }
}

// Runs slot `idx` of `warp` for all its participants and releases them.
void complete(Fiber* self, unsigned warp, unsigned idx) {
  Worker* w = self->worker;
  WarpState& ws = w->warps[warp];
  const Collective c = ws.slot[idx];
  switch (c.op) {
    case CollOp::Shfl: compute_shfl(w, warp, c); break;
    case CollOp::SyncWarp: publish_at_syncwarp(w, warp, c.arrived); break;
    case CollOp::Mma: compute_mma(w, warp, c); break;
    case CollOp::Ldmatrix: compute_ldmatrix(self, warp, c); break;
  }
  ws.active_slots &= ~(1u << idx);
  for (unsigned lane = 0; lane < kWarpSize; ++lane) {
    if (((c.arrived >> lane) & 1u) == 0) continue;
    Fiber& f = lane_fiber(w, warp, lane);
    f.coll_slot = -1;
    if (&f != self) {
      f.state = FiberState::Runnable;
      f.wait = WaitKind::None;
    }
  }
}

bool is_complete(const WarpState& ws, const Collective& c) {
  return (c.mask & ~ws.exited & ~c.arrived) == 0;
}

// The rendezvous: joins (or opens) the collective keyed by (op, sub, site, mask) in this
// lane's warp; the last participant computes it. Returns once the results are in place.
void arrive(Fiber* self, CollOp op, uint8_t sub, uint32_t mask, Site site) {
  Worker* w = self->worker;
  const unsigned warp = self->ts.warp, lane = self->ts.lane;
  const uint32_t bit = 1u << lane;
  WarpState& ws = w->warps[warp];
  Collective probe{op, sub, site, mask, 0};
  if (needs_all_lanes(op)) {
    if (ws.exited != 0) {
      Msg what;
      what.add("warp collective ");
      describe_collective(probe, what);
      what.add(" needs all 32 lanes of the warp (.sync.aligned), but lane(s) ");
      add_lanes(what, ws.exited);
      what.add(" have exited or do not exist (block of %u threads)", w->nthreads);
      fail(self, SA_EMU_ERR_WARP, self, site, what);
    }
  } else if ((mask & bit) == 0) {
    Msg what;
    what.add("warp collective ");
    describe_collective(probe, what);
    what.add(": the calling lane %u is not in its own mask", lane);
    fail(self, SA_EMU_ERR_WARP, self, site, what);
  }
  int found = -1;
  for (uint32_t act = ws.active_slots; act != 0; act &= act - 1) {
    const unsigned i = static_cast<unsigned>(__builtin_ctz(act));
    const Collective& c = ws.slot[i];
    if (c.op == op && c.sub == sub && c.mask == mask && same_site(c.site, site)) {
      found = static_cast<int>(i);
      continue;
    }
    // They wait for this lane and this lane waits for (some of) them: they can never meet.
    if ((c.mask & bit) != 0 && (mask & c.arrived) != 0) {
      Msg what;
      what.add("mismatched warp collectives: lane %u arrives at ", lane);
      describe_collective(probe, what);
      what.add(" while lane(s) ");
      add_lanes(what, c.arrived);
      what.add(" of its warp wait for it at ");
      describe_collective(c, what);
      what.add(" (%s:%d); all lanes of a mask must execute the same collective at the same "
               "call site",
               c.site.file, c.site.line);
      fail(self, SA_EMU_ERR_WARP, self, site, what);
    }
  }
  if (found < 0) {
    found = __builtin_ctz(~ws.active_slots);  // at most 32 disjoint groups: always one free
    ws.slot[found] = probe;
    ws.active_slots |= 1u << found;
  }
  Collective& c = ws.slot[found];
  c.arrived |= bit;
  self->coll_slot = found;
  if (is_complete(ws, c)) {
    complete(self, warp, static_cast<unsigned>(found));
    return;
  }
  block_on(self, WaitKind::Warp, site);
}

}  // namespace

void describe_collective(const Collective& c, Msg& m) {
  switch (c.op) {
    case CollOp::Shfl:
      m.add("shfl.sync.%s (mask 0x%08x)", shfl_mode_name(c.sub), c.mask);
      break;
    case CollOp::SyncWarp:
      m.add("__syncwarp (mask 0x%08x)", c.mask);
      break;
    case CollOp::Mma:
      m.add("mma.m16n8k%d.%s", (c.sub & kMmaK8) != 0 ? 8 : 16,
            (c.sub & kMmaBf16) != 0 ? "bf16" : "f16");
      break;
    case CollOp::Ldmatrix:
      m.add("ldmatrix.x%u%s", c.sub & 7u, (c.sub & kLdsmTrans) != 0 ? ".trans" : "");
      break;
  }
}

void reset_warps(Worker* w) {
  for (unsigned i = 0; i < w->nwarps; ++i) {
    WarpState& ws = w->warps[i];
    const unsigned n = std::min<unsigned>(kWarpSize, w->nthreads - i * kWarpSize);
    ws.exited = n == kWarpSize ? 0u : ~((1u << n) - 1u);
    ws.active_slots = 0;
  }
}

void warp_lane_exited(Fiber* f) {
  Worker* w = f->worker;
  const unsigned warp = f->ts.warp, lane = f->ts.lane;
  const uint32_t bit = 1u << lane;
  WarpState& ws = w->warps[warp];
  ws.exited |= bit;
  for (uint32_t act = ws.active_slots; act != 0; act &= act - 1) {
    const unsigned i = static_cast<unsigned>(__builtin_ctz(act));
    const Collective& c = ws.slot[i];
    if ((c.mask & bit) == 0) continue;
    if (needs_all_lanes(c.op)) {
      Msg what;
      what.add("lane %u exited while lane(s) ", lane);
      add_lanes(what, c.arrived);
      what.add(" of its warp wait for it at ");
      describe_collective(c, what);
      what.add(", which needs all 32 lanes (.sync.aligned)");
      fail(f, SA_EMU_ERR_WARP, f, c.site, what);
    }
    if (is_complete(ws, c)) complete(f, warp, i);
  }
}

}  // namespace detail

// ---- runtime.h ------------------------------------------------------------------------------------

void syncwarp(unsigned mask, Site site) {
  detail::Fiber* f = detail::current_fiber("__syncwarp");
  f->last_site = site;
  detail::arrive(f, detail::CollOp::SyncWarp, 0, mask, site);
}

uint32_t shfl(ShflMode mode, unsigned mask, uint32_t value, int b, int c, Site site) {
  using namespace detail;
  Fiber* f = current_fiber("shfl");
  f->last_site = site;
  const int width = 32 - ((c >> 8) & 31);
  if ((width & (width - 1)) != 0 || (c & ~0x1f1f) != 0) {
    Msg what;
    what.add("shfl.sync: invalid clamp/segment operand c = 0x%x (width %d must be a power of two "
             "<= 32)",
             static_cast<unsigned>(c), width);
    fail(f, SA_EMU_ERR_WARP, f, site, what);
  }
  f->arrival.value = value;
  f->arrival.b = b;
  f->arrival.c = c;
  f->arrival.mode = static_cast<int>(mode);
  arrive(f, CollOp::Shfl, static_cast<uint8_t>(mode), mask, site);
  return f->arrival.result;
}

void mma(MmaType type, int k, float d[4], const uint32_t* a, const uint32_t* b, const float c[4],
         Site site) {
  using namespace detail;
  Fiber* f = current_fiber("mma");
  f->last_site = site;
  if (k != 8 && k != 16) {
    Msg what;
    what.add("mma: k must be 8 or 16 (got %d)", k);
    fail(f, SA_EMU_ERR_INTERNAL, f, site, what);
  }
  f->arrival.a = a;
  f->arrival.bfrag = b;
  f->arrival.cfrag = c;
  f->arrival.d = d;
  const uint8_t sub = static_cast<uint8_t>((type == MmaType::BF16 ? kMmaBf16 : 0) |
                                           (k == 8 ? kMmaK8 : 0));
  arrive(f, CollOp::Mma, sub, kFullMask, site);
}

void ldmatrix(int num, bool trans, uint32_t* regs, const void* row_addr, Site site) {
  using namespace detail;
  Fiber* f = current_fiber("ldmatrix");
  f->last_site = site;
  if (num != 1 && num != 2 && num != 4) {
    Msg what;
    what.add("ldmatrix: the number of matrices must be 1, 2 or 4 (got %d)", num);
    fail(f, SA_EMU_ERR_INTERNAL, f, site, what);
  }
  f->arrival.addr = row_addr;
  f->arrival.regs = regs;
  arrive(f, CollOp::Ldmatrix, static_cast<uint8_t>(num | (trans ? kLdsmTrans : 0)), kFullMask,
         site);
}

}  // namespace emu
}  // namespace sa
