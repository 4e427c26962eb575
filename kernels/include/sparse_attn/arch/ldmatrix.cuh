// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16: a warp loads one, two or four
// 8x8 matrices of 16-bit elements from shared memory into registers.
//
// Lanes 8m..8m+7 supply the row addresses of matrix m (16-byte aligned, any order: swizzled
// layouts rely on that); register m receives matrix m. Without .trans lane L gets
// {E[m][L/4][2t], E[m][L/4][2t+1]}; with .trans {E[m][2t][g], E[m][2t+1][g]}.
// For x1/x2 the addresses of lanes 8..31 / 16..31 are ignored, but every lane must call.
#pragma once

#include "sparse_attn/arch/memory.cuh"

namespace sa {
namespace arch {

#if defined(SA_GPU)
// The 32-bit shared-state-space address PTX takes.
SA_DEVICE uint32_t smem_u32(Smem p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(SmemAccess::raw(p)));
}
#endif

SA_DEVICE void ldmatrix_x1(uint32_t r[1], Smem row_addr SA_SITE_PARAM) {
#if defined(SA_GPU)
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0])
               : "r"(smem_u32(row_addr))
               : "memory");
#else
  ::sa::emu::ldmatrix(1, false, r, SmemAccess::raw(row_addr), site);
#endif
}

SA_DEVICE void ldmatrix_x2(uint32_t r[2], Smem row_addr SA_SITE_PARAM) {
#if defined(SA_GPU)
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_u32(row_addr))
               : "memory");
#else
  ::sa::emu::ldmatrix(2, false, r, SmemAccess::raw(row_addr), site);
#endif
}

SA_DEVICE void ldmatrix_x4(uint32_t r[4], Smem row_addr SA_SITE_PARAM) {
#if defined(SA_GPU)
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(row_addr))
               : "memory");
#else
  ::sa::emu::ldmatrix(4, false, r, SmemAccess::raw(row_addr), site);
#endif
}

SA_DEVICE void ldmatrix_x1_trans(uint32_t r[1], Smem row_addr SA_SITE_PARAM) {
#if defined(SA_GPU)
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0])
               : "r"(smem_u32(row_addr))
               : "memory");
#else
  ::sa::emu::ldmatrix(1, true, r, SmemAccess::raw(row_addr), site);
#endif
}

SA_DEVICE void ldmatrix_x2_trans(uint32_t r[2], Smem row_addr SA_SITE_PARAM) {
#if defined(SA_GPU)
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_u32(row_addr))
               : "memory");
#else
  ::sa::emu::ldmatrix(2, true, r, SmemAccess::raw(row_addr), site);
#endif
}

SA_DEVICE void ldmatrix_x4_trans(uint32_t r[4], Smem row_addr SA_SITE_PARAM) {
#if defined(SA_GPU)
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(row_addr))
               : "memory");
#else
  ::sa::emu::ldmatrix(4, true, r, SmemAccess::raw(row_addr), site);
#endif
}

}  // namespace arch
}  // namespace sa
