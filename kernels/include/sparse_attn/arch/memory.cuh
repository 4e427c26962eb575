// Checked memory access: the shared-memory address type and its loads and stores, and aligned
// vector access to global memory.
//
// Shared memory is reached only through `Smem`, an address into the block's dynamic shared
// memory that kernel code cannot dereference. The arch layer alone turns it into a pointer:
// cp.async destinations, ldmatrix rows and lds/sts. Under the emulator each of these is
// checked against the shadow state of shared memory (cp.async in flight or unpublished, plain
// stores racing with other threads' loads and stores, bytes nobody wrote, alignment, bounds),
// so "shared memory is read only through ldmatrix and lds" is a type, not a comment.
//
// Global memory is read and written with plain C++ except vector accesses (4-, 8- and 16-byte
// reinterpretations such as uint4 or a packed pair): those go through ldg/stg, which the
// emulator checks for natural alignment, as the GPU does (x86 would not fault).
#pragma once

#include "sparse_attn/arch/platform.cuh"

namespace sa {

namespace arch {
struct SmemAccess;
}

// A byte address in the block's dynamic shared memory (see sa::dynamic_smem()). Offsets are
// in bytes; there is no dereference.
class Smem {
 public:
  SA_HOST_DEVICE Smem() : p_(nullptr) {}
  SA_HOST_DEVICE Smem operator+(int64_t bytes) const { return Smem(p_ + bytes); }
  SA_HOST_DEVICE Smem& operator+=(int64_t bytes) {
    p_ += bytes;
    return *this;
  }

 private:
  friend struct arch::SmemAccess;
  SA_HOST_DEVICE explicit Smem(char* p) : p_(p) {}
  char* p_;
};

namespace arch {

// The one way from an `Smem` to a pointer, for the arch layer (and sa::dynamic_smem). Kernel
// code outside kernels/include/sparse_attn/arch/ never names it (tests/kernel_rules.rs).
struct SmemAccess {
  SA_HOST_DEVICE static char* raw(Smem s) { return s.p_; }
  SA_HOST_DEVICE static Smem wrap(char* p) { return Smem(p); }
};

// A load of one T from shared memory.
template <typename T>
SA_DEVICE T lds(Smem p SA_SITE_PARAM) {
  const T* q = reinterpret_cast<const T*>(SmemAccess::raw(p));
#if defined(SA_EMULATED)
  ::sa::emu::shared_access(q, sizeof(T), alignof(T), false, site);
#endif
  return *q;
}

// A store of one T to shared memory. Another thread may read it only after a __syncthreads
// (or, within the warp, a __syncwarp over both lanes).
template <typename T>
SA_DEVICE void sts(Smem p, T v SA_SITE_PARAM) {
  T* q = reinterpret_cast<T*>(SmemAccess::raw(p));
#if defined(SA_EMULATED)
  ::sa::emu::shared_access(q, sizeof(T), alignof(T), true, site);
#endif
  *q = v;
}

// A vector load from global memory; `p` must be aligned to alignof(T).
template <typename T>
SA_DEVICE T ldg(const T* p SA_SITE_PARAM) {
#if defined(SA_EMULATED)
  ::sa::emu::global_access(p, sizeof(T), alignof(T), site);
#endif
  return *p;
}

// A vector store to global memory; `p` must be aligned to alignof(T).
template <typename T>
SA_DEVICE void stg(T* p, T v SA_SITE_PARAM) {
#if defined(SA_EMULATED)
  ::sa::emu::global_access(p, sizeof(T), alignof(T), site);
#endif
  *p = v;
}

}  // namespace arch
}  // namespace sa
