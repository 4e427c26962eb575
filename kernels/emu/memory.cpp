// Guard-paged memory: global buffers (`sa_emu_alloc`) with their process-wide registry, and
// the per-worker dynamic shared memory. See internal.h for the emulator's design.
//
// Global buffer layout (one mapping):
//   [leading guard page][slack][buffer, `bytes` long][trailing guard page]
// The buffer ends exactly at the trailing guard, so reading even one element past the end
// faults; its start is therefore aligned to the largest power of two dividing `bytes` (a
// buffer of f32 is 4-byte aligned, one of 16-byte rows 16-byte aligned).
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

#include "internal.h"

namespace sa {
namespace emu {
namespace detail {

size_t page_size() {
  static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return p;
}

static size_t round_up(size_t x, size_t to) { return (x + to - 1) / to * to; }

namespace {

struct Registry {
  std::mutex mu;
  std::vector<BufferInfo> buffers;  // sorted by begin
};

Registry& registry() {
  static Registry* r = new Registry;  // never destroyed: buffers may be freed during exit
  return *r;
}

}  // namespace

std::vector<BufferInfo> snapshot_buffers() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  return r.buffers;
}

const BufferInfo* find_buffer(const std::vector<BufferInfo>& bufs, uintptr_t addr, size_t len) {
  // Last buffer with begin <= addr.
  auto it = std::upper_bound(bufs.begin(), bufs.end(), addr,
                             [](uintptr_t a, const BufferInfo& b) { return a < b.begin; });
  if (it == bufs.begin()) return nullptr;
  --it;
  if (addr - it->begin <= it->size && len <= it->size - (addr - it->begin)) return &*it;
  return nullptr;
}

void describe_global_address(const std::vector<BufferInfo>& bufs, uintptr_t addr, Msg& out) {
  for (const BufferInfo& b : bufs) {
    const uintptr_t end = b.begin + b.size;
    const uintptr_t map_end = b.map_begin + b.map_size;
    if (addr >= b.begin && addr < end) {
      out.add("inside buffer '%s' (%zu bytes), byte offset %zu", b.label.c_str(), b.size,
              static_cast<size_t>(addr - b.begin));
      return;
    }
    if (addr >= end && addr < map_end) {
      out.add("%zu bytes past the end of buffer '%s' (%zu bytes; byte offset %zu hits its "
              "trailing guard page)",
              static_cast<size_t>(addr - end), b.label.c_str(), b.size,
              static_cast<size_t>(addr - b.begin));
      return;
    }
    if (addr >= b.map_begin && addr < b.begin) {
      out.add("%zu bytes before the start of buffer '%s' (%zu bytes; in its leading guard)",
              static_cast<size_t>(b.begin - addr), b.label.c_str(), b.size);
      return;
    }
  }
  // Not near any buffer: name the closest one for orientation.
  const BufferInfo* best = nullptr;
  uintptr_t best_dist = ~uintptr_t{0};
  for (const BufferInfo& b : bufs) {
    const uintptr_t d = addr < b.begin ? b.begin - addr : addr - (b.begin + b.size);
    if (d < best_dist) {
      best_dist = d;
      best = &b;
    }
  }
  out.add("not inside any sa_emu_alloc buffer");
  if (best != nullptr && best_dist < (uintptr_t{1} << 32)) {
    if (addr < best->begin) {
      out.add(" (nearest: %zu bytes before buffer '%s', byte offset -%zu)",
              static_cast<size_t>(best_dist), best->label.c_str(),
              static_cast<size_t>(best_dist));
    } else {
      out.add(" (nearest: %zu bytes past the end of buffer '%s' of %zu bytes, byte offset "
              "%zu)",
              static_cast<size_t>(best_dist), best->label.c_str(), best->size,
              static_cast<size_t>(addr - best->begin));
    }
  }
}

// ---- dynamic shared memory -------------------------------------------------------------------

SharedMemory::~SharedMemory() {
  if (map_ != nullptr) munmap(map_, map_size_);
}

bool SharedMemory::init(size_t bytes) {
  const size_t page = page_size();
  padded_ = round_up(bytes, 16);
  size_ = bytes;
  map_size_ = round_up(padded_, page) + page;
  void* m = mmap(nullptr, map_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) {
    map_ = nullptr;
    return false;
  }
  map_ = static_cast<char*>(m);
  char* guard = map_ + map_size_ - page;
  if (mprotect(guard, page, PROT_NONE) != 0) return false;
  base_ = guard - padded_;
  return true;
}

bool SharedMemory::in_guard(uintptr_t addr) const {
  if (map_ == nullptr) return false;
  const uintptr_t guard = reinterpret_cast<uintptr_t>(map_) + map_size_ - page_size();
  return addr >= guard && addr < guard + page_size();
}

}  // namespace detail
}  // namespace emu
}  // namespace sa

using sa::emu::detail::BufferInfo;

extern "C" void* sa_emu_alloc(size_t bytes, const char* label) {
  using namespace sa::emu::detail;
  const size_t page = page_size();
  if (bytes > (size_t{1} << 46)) return nullptr;
  const size_t body = round_up(bytes == 0 ? 1 : bytes, page);
  const size_t map_size = page + body + page;
  void* m = mmap(nullptr, map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return nullptr;
  char* map = static_cast<char*>(m);
  char* trailing = map + page + body;
  if (mprotect(map, page, PROT_NONE) != 0 || mprotect(trailing, page, PROT_NONE) != 0) {
    munmap(map, map_size);
    return nullptr;
  }
  char* ptr = trailing - bytes;  // fresh anonymous pages are zero-filled
  BufferInfo info;
  info.begin = reinterpret_cast<uintptr_t>(ptr);
  info.size = bytes;
  info.map_begin = reinterpret_cast<uintptr_t>(map);
  info.map_size = map_size;
  try {
    info.label = label != nullptr ? label : "(unnamed)";
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = std::upper_bound(
        r.buffers.begin(), r.buffers.end(), info.begin,
        [](uintptr_t a, const BufferInfo& b) { return a < b.begin; });
    r.buffers.insert(it, std::move(info));
  } catch (...) {
    munmap(map, map_size);
    return nullptr;
  }
  return ptr;
}

extern "C" void sa_emu_free(void* ptr) {
  using namespace sa::emu::detail;
  if (ptr == nullptr) return;
  const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
  uintptr_t map_begin = 0;
  size_t map_size = 0;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = std::lower_bound(r.buffers.begin(), r.buffers.end(), p,
                               [](const BufferInfo& b, uintptr_t a) { return b.begin < a; });
    // Zero-sized buffers share their begin with nothing else (each has its own mapping).
    if (it == r.buffers.end() || it->begin != p) {
      fprintf(stderr, "sa_emu_free: %p was not allocated by sa_emu_alloc (ignored)\n", ptr);
      return;
    }
    map_begin = it->map_begin;
    map_size = it->map_size;
    r.buffers.erase(it);
  }
  munmap(reinterpret_cast<void*>(map_begin), map_size);
}
