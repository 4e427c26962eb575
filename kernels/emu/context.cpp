// Fiber execution contexts: a minimal x86-64 context switch (ucontext elsewhere) and the
// guard-paged fiber stacks. See internal.h for the emulator's design.
//
// Why hand-written: every shuffle, mma and ldmatrix is a 32-lane rendezvous, i.e. 64 context
// switches. swapcontext saves and restores the signal mask with a syscall each time (~1 us);
// the switch below is ~20 instructions and touches no kernel state.
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

namespace sa {
namespace emu {
namespace detail {

#if SA_EMU_ASM_CONTEXT

extern "C" void sa_emu_ctx_switch(void** save_sp, void* load_sp);
extern "C" void sa_emu_ctx_trampoline();

// Stack image of a suspended context, from its saved stack pointer upwards:
//   [sp+0]  MXCSR (4 bytes), x87 control word (2 bytes), padding
//   [sp+8]  r15, r14, r13, r12, rbx, rbp
//   [sp+56] return address
// System V x86-64: rbx, rbp, r12-r15, the MXCSR control bits and the x87 control word are
// callee-saved; everything else is caller-saved, so the compiler has already spilled it.
// ldmxcsr and fldcw stall the FP pipeline, and fibers practically never change either
// register, so they are reloaded only when the incoming context's value differs.
asm(R"(
    .text
    .p2align 4
    .globl sa_emu_ctx_switch
    .hidden sa_emu_ctx_switch
    .type sa_emu_ctx_switch, @function
sa_emu_ctx_switch:
    .cfi_startproc
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movl (%rsp), %eax
    movzwl 4(%rsp), %edx
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    cmpl (%rsp), %eax
    je 1f
    ldmxcsr (%rsp)
1:
    cmpw 4(%rsp), %dx
    je 2f
    fldcw 4(%rsp)
2:
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .cfi_endproc
    .size sa_emu_ctx_switch, .-sa_emu_ctx_switch

    .p2align 4
    .globl sa_emu_ctx_trampoline
    .hidden sa_emu_ctx_trampoline
    .type sa_emu_ctx_trampoline, @function
sa_emu_ctx_trampoline:
    .cfi_startproc
    .cfi_undefined rip
    movq %r12, %rdi
    callq *%r13
    ud2
    .cfi_endproc
    .size sa_emu_ctx_trampoline, .-sa_emu_ctx_trampoline
)");

void context_init(Context* ctx, char* stack_lo, size_t stack_size, void (*entry)(void*),
                  void* arg) {
  // 16-byte aligned top with a little slack; after the switch pops 64 bytes and `ret`s into
  // the trampoline, rsp is 16-byte aligned, so `callq` enters `entry` with the ABI alignment.
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack_lo) + stack_size) & ~uintptr_t{15};
  uint64_t* sp = reinterpret_cast<uint64_t*>(top - 16 - 64);
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  sp[0] = static_cast<uint64_t>(mxcsr) | (static_cast<uint64_t>(fpucw) << 32);
  sp[1] = 0;                                          // r15
  sp[2] = 0;                                          // r14
  sp[3] = reinterpret_cast<uint64_t>(entry);          // r13
  sp[4] = reinterpret_cast<uint64_t>(arg);            // r12
  sp[5] = 0;                                          // rbx
  sp[6] = 0;                                          // rbp: ends frame-pointer walks
  sp[7] = reinterpret_cast<uint64_t>(&sa_emu_ctx_trampoline);  // return address
  ctx->sp = sp;
}

void context_switch(Context* from, Context* to) { sa_emu_ctx_switch(&from->sp, to->sp); }

#else  // ucontext fallback (non-x86-64, or SA_EMU_FORCE_UCONTEXT for testing it)

static void uc_entry(unsigned hi, unsigned lo) {
  Context* ctx = reinterpret_cast<Context*>((static_cast<uintptr_t>(hi) << 32) | lo);
  ctx->entry(ctx->arg);
}

void context_init(Context* ctx, char* stack_lo, size_t stack_size, void (*entry)(void*),
                  void* arg) {
  getcontext(&ctx->uc);
  ctx->uc.uc_stack.ss_sp = stack_lo;
  ctx->uc.uc_stack.ss_size = stack_size;
  ctx->uc.uc_link = nullptr;
  ctx->entry = entry;
  ctx->arg = arg;
  const uintptr_t p = reinterpret_cast<uintptr_t>(ctx);
  makecontext(&ctx->uc, reinterpret_cast<void (*)()>(&uc_entry), 2,
              static_cast<unsigned>(static_cast<uint64_t>(p) >> 32),
              static_cast<unsigned>(p & 0xffffffffu));
}

void context_switch(Context* from, Context* to) { swapcontext(&from->uc, &to->uc); }

#endif

// ---- fiber stacks ------------------------------------------------------------------------------

StackPool::~StackPool() {
  if (map_ != nullptr) munmap(map_, map_size_);
}

bool StackPool::ensure(size_t count) {
  if (count <= count_) return true;
  if (map_ != nullptr) {
    munmap(map_, map_size_);
    map_ = nullptr;
    count_ = 0;
    map_size_ = 0;
  }
  const size_t size = count * (kGuard + kUsable);
  void* m = mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return false;
  map_ = static_cast<char*>(m);
  map_size_ = size;
  for (size_t i = 0; i < count; ++i) {
    if (mprotect(stack_lo(i), kUsable, PROT_READ | PROT_WRITE) != 0) {
      munmap(map_, map_size_);
      map_ = nullptr;
      map_size_ = 0;
      return false;
    }
  }
  count_ = count;
  return true;
}

long StackPool::guard_hit(uintptr_t addr) const {
  const uintptr_t lo = reinterpret_cast<uintptr_t>(map_);
  if (map_ == nullptr || addr < lo || addr >= lo + map_size_) return -1;
  const size_t off = addr - lo;
  const size_t i = off / (kGuard + kUsable);
  if (off % (kGuard + kUsable) >= kGuard) return -1;
  return static_cast<long>(i);
}

}  // namespace detail
}  // namespace emu
}  // namespace sa
