// Runs the CUDA kernels of kernels/recap.cu on the CPU, so the emulated-kernel tests
// (runtime/tests/cuda_emu.rs) check them against the reference compositions on a machine with
// no GPU. The test compiles this file into a shared library with the host's C++ compiler and
// calls `recap_emu_launch` with the launch geometry and the argument list a CUDA launch takes
// (one pointer per argument, as cuLaunchKernel takes them, with each argument's kind, checked
// against the kernel's parameter types); device pointers are host pointers.
//
// Each CUDA thread of a block is a fiber (ucontext) and the block's threads run one at a time,
// each until it reaches a __syncthreads or a warp shuffle, where it waits for the others; a
// block runs after the previous one has finished, so `__shared__` arrays are statics (filled
// with garbage before each launch, as a GPU's hold) and atomicAdd a plain add. All of it is
// per OS thread, so tests may launch kernels side by side. The run is deterministic, and the
// emulator reports as errors what a GPU would leave undefined or hang on: a warp shuffle that
// some lanes of the warp do not reach, or reach at another shuffle (another source line) or
// with another lane mask; a shuffle whose mask is not the whole warp; threads waiting at
// different barriers, or at a barrier after others of the block have exited; and a launch
// geometry the hardware rejects.

#include <ucontext.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <algorithm>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
};

namespace emu {

enum class State { Ready, AtBarrier, AtShuffle, Done };

struct Thread {
  ucontext_t ctx;
  uint3 idx;
  State state;
  // The source line of the barrier or shuffle the thread waits at.
  int site;
  // A shuffle's operands while the thread waits at it, then its result.
  float value;
  int lane_mask;
  float result;
};

constexpr std::size_t kStack = 32 * 1024;

thread_local Thread *current = nullptr;
thread_local ucontext_t scheduler;
thread_local uint3 block_idx;
thread_local dim3 block_dim, grid_dim;
thread_local std::string error;
thread_local std::function<void()> body;
thread_local std::vector<Thread> threads;
thread_local std::vector<std::vector<char>> stacks;

// Leaves the running thread for good after an error; the scheduler stops the launch.
[[noreturn]] void fail(const std::string &why) {
  if (error.empty()) error = why;
  current->state = State::Done;
  swapcontext(&current->ctx, &scheduler);
  std::abort();  // The scheduler never resumes a thread after an error.
}

void wait(State at, int site) {
  current->state = at;
  current->site = site;
  swapcontext(&current->ctx, &scheduler);
}

float shfl_xor(unsigned mask, float v, int lane_mask, int site) {
  if (mask != 0xffffffffu) fail("a warp shuffle with a mask other than the whole warp");
  current->value = v;
  current->lane_mask = lane_mask;
  wait(State::AtShuffle, site);
  return current->result;
}

// Shuffles of other types than float would be converted silently; none is emulated.
template <typename T> T shfl_xor(unsigned, T, int, int) = delete;

void entry() {
  body();
  current->state = State::Done;
}

std::string where() {
  char buf[96];
  std::snprintf(buf, sizeof buf, "block (%u, %u, %u)", block_idx.x, block_idx.y, block_idx.z);
  return buf;
}

}  // namespace emu

// What recap.cu uses of CUDA's device built-ins.
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static thread_local
#define threadIdx (emu::current->idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

// Barriers and shuffles note the source line they are called from, so threads waiting at
// different ones are told apart.
#define __syncthreads() emu::wait(emu::State::AtBarrier, __LINE__)
#define __shfl_xor_sync(mask, v, lane_mask) emu::shfl_xor(mask, v, lane_mask, __LINE__)

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
// CUDA's integer min; mixed or other types would be converted silently, so they do not compile.
inline int min(int a, int b) { return a < b ? a : b; }
template <typename A, typename B> void min(A, B) = delete;

inline float atomicAdd(float *at, float v) {
  const float old = *at;
  *at = v + old;
  return old;
}

#include "../recap.cu"

namespace emu {

// What became of a warp whose lanes have all stopped running.
enum class Warp { AtShuffle, Waiting, Failed };

// Releases warp `w` (threads [w, end)) if all its lanes wait at one shuffle, computing every
// lane's result first, so no lane reads a value its partner has already replaced. A warp with
// lanes at a shuffle and others elsewhere (exited, at a barrier), or at shuffles of different
// lane masks, fails: on a GPU a shuffle needs every lane its mask names.
Warp release_warp(std::size_t w, std::size_t end) {
  std::size_t at = 0;
  for (std::size_t i = w; i < end; i++) at += threads[i].state == State::AtShuffle;
  if (at == 0) return Warp::Waiting;
  if (end - w < 32 || at != end - w) {
    error = "a warp shuffle that " + std::to_string(at) + " of the 32 lanes of warp " +
            std::to_string(w / 32) + " reached, in " + where() +
            " (the others had exited, or wait at a barrier or are not in the warp)";
    return Warp::Failed;
  }
  for (std::size_t i = w; i < end; i++) {
    if (threads[i].site != threads[w].site || threads[i].lane_mask != threads[w].lane_mask) {
      error = "lanes of warp " + std::to_string(w / 32) + " in " + where() +
              " wait at different shuffles (recap.cu lines " + std::to_string(threads[w].site) +
              " and " + std::to_string(threads[i].site) + ", or other lane masks)";
      return Warp::Failed;
    }
    const std::size_t src = w + ((i - w) ^ static_cast<std::size_t>(threads[i].lane_mask & 31));
    threads[i].result = threads[src].value;
  }
  for (std::size_t i = w; i < end; i++) threads[i].state = State::Ready;
  return Warp::AtShuffle;
}

// Runs one block to its end; false with `error` set when it cannot finish. Between barriers
// each warp runs as far as it can before the next one starts (in ascending order in even
// blocks, descending in odd ones), the largest skew between warps a GPU allows, so a barrier
// missing between a shared-memory write and another warp's read shows as a wrong result.
bool run_block() {
  const std::size_t n = threads.size();
  for (std::size_t i = 0; i < n; i++) {
    Thread &t = threads[i];
    getcontext(&t.ctx);
    t.ctx.uc_stack.ss_sp = stacks[i].data();
    t.ctx.uc_stack.ss_size = stacks[i].size();
    t.ctx.uc_link = &scheduler;
    makecontext(&t.ctx, entry, 0);
    const unsigned id = static_cast<unsigned>(i);
    t.idx = {id % block_dim.x, id / block_dim.x % block_dim.y, id / (block_dim.x * block_dim.y)};
    t.state = State::Ready;
  }
  const std::size_t warps = (n + 31) / 32;
  const bool descending = (block_idx.x + block_idx.y + block_idx.z) % 2 == 1;
  for (;;) {
    for (std::size_t k = 0; k < warps; k++) {
      const std::size_t w = 32 * (descending ? warps - 1 - k : k), end = std::min(n, w + 32);
      for (;;) {
        for (std::size_t i = w; i < end; i++) {
          if (threads[i].state != State::Ready) continue;
          current = &threads[i];
          swapcontext(&scheduler, &threads[i].ctx);
          if (!error.empty()) return false;
        }
        const Warp next = release_warp(w, end);
        if (next == Warp::Failed) return false;
        if (next == Warp::Waiting) break;
      }
    }
    std::size_t done = 0, at_barrier = 0;
    for (const Thread &t : threads) {
      done += t.state == State::Done;
      at_barrier += t.state == State::AtBarrier;
    }
    if (done == n) return true;
    if (done > 0) {
      error = std::to_string(at_barrier) + " threads of " + where() +
              " wait at a barrier after " + std::to_string(done) +
              " others have exited (undefined on a GPU)";
      return false;
    }
    int site = -1;
    for (const Thread &t : threads) {
      if (site >= 0 && t.site != site) {
        error = "threads of " + where() + " wait at different barriers (recap.cu lines " +
                std::to_string(site) + " and " + std::to_string(t.site) + ")";
        return false;
      }
      site = t.site;
    }
    for (Thread &t : threads) t.state = State::Ready;
  }
}

// Fills the shared arrays of recap.cu (the partial results of block_sum and block_max, one per
// warp) with garbage, as a GPU's shared memory holds when a block starts: NaN for the sums and
// +inf for the maxima (fmaxf would drop a NaN), so a reduction that reads an entry no warp of
// its block wrote gives a wrong result. One block of 1024 threads (32 warps) writes every
// entry. The test checks that recap.cu has no other shared arrays.
bool poison_shared() {
  block_dim = {1024, 1, 1};
  block_idx = {0, 0, 0};
  body = [] {
    block_sum(NAN);
    block_max(INFINITY);
  };
  threads.assign(1024, Thread{});
  while (stacks.size() < threads.size()) stacks.emplace_back(kStack);
  return run_block();
}

int launch(const dim3 grid, const dim3 block, std::function<void()> call) {
  error.clear();
  const unsigned long long per_block = 1ull * block.x * block.y * block.z;
  if (per_block == 0 || per_block > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    error = "a launch geometry the hardware rejects: grid (" + std::to_string(grid.x) + ", " +
            std::to_string(grid.y) + ", " + std::to_string(grid.z) + "), block (" +
            std::to_string(block.x) + ", " + std::to_string(block.y) + ", " +
            std::to_string(block.z) + ")";
    return 1;
  }
  if (!poison_shared()) return 1;
  grid_dim = grid;
  block_dim = block;
  body = std::move(call);
  threads.assign(per_block, Thread{});
  while (stacks.size() < per_block) stacks.emplace_back(kStack);
  for (unsigned z = 0; z < grid.z; z++)
    for (unsigned y = 0; y < grid.y; y++)
      for (unsigned x = 0; x < grid.x; x++) {
        block_idx = {x, y, z};
        if (!run_block()) return 1;
      }
  return 0;
}

// The kind of a kernel parameter, as the launch names it: p pointer, f float, i int, u size_t,
// l long long.
template <typename T> constexpr char kind_of() {
  if constexpr (std::is_pointer_v<T>) return 'p';
  if constexpr (std::is_same_v<T, float>) return 'f';
  if constexpr (std::is_same_v<T, int>) return 'i';
  if constexpr (std::is_same_v<T, std::size_t>) return 'u';
  if constexpr (std::is_same_v<T, long long>) return 'l';
  return '?';
}

// A kernel's call with the arguments read from a cuLaunchKernel-style list, bound once; empty,
// with `error` set, when the launch's argument kinds are not the kernel's parameter types.
template <typename... A, std::size_t... I>
std::function<void()> bind_args(void (*k)(A...), void **args, const std::string &kinds,
                                std::index_sequence<I...>) {
  const std::string want{kind_of<A>()...};
  if (kinds != want) {
    error = "the launch passes arguments of kinds \"" + kinds + "\" to parameters of kinds \"" +
            want + "\" (p pointer, f float, i int, u size_t, l long long)";
    return {};
  }
  std::tuple<A...> values{*static_cast<A *>(args[I])...};
  return [k, values] { std::apply(k, values); };
}

using Binder = std::function<std::function<void()>(void **, const std::string &)>;

template <typename... A> Binder binder(void (*k)(A...)) {
  return [k](void **args, const std::string &kinds) {
    return bind_args(k, args, kinds, std::index_sequence_for<A...>{});
  };
}

#define RECAP_EMU_ENTRY(k) {#k "_f32", binder(k##_f32)}, {#k "_bf16", binder(k##_bf16)},

// Kernels that break the rules a GPU sets, for the test that the emulator reports each.
namespace broken {

// Half the block waits at one barrier, half at another.
void different_barriers(float *out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

// Half the block exits, the rest waits at a barrier.
void barrier_after_exit(float *out) {
  if (threadIdx.x >= 32) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

// Odd lanes sum over the warp while even lanes take its maximum.
void different_shuffles(float *out) {
  const float v = threadIdx.x % 2 ? warp_sum(1.0f) : warp_max(1.0f);
  out[threadIdx.x] = v;
}

}  // namespace broken

const std::map<std::string, Binder> &kernels() {
  static const std::map<std::string, Binder> table = {
      RECAP_EMU_ENTRY(rms_norm_fwd) RECAP_EMU_ENTRY(rms_norm_bwd) RECAP_EMU_ENTRY(rms_norm_dw)
          RECAP_EMU_ENTRY(cast_from_f32) RECAP_EMU_ENTRY(rope) RECAP_EMU_ENTRY(swiglu_fwd)
              RECAP_EMU_ENTRY(swiglu_bwd) RECAP_EMU_ENTRY(softmax_fwd)
                  RECAP_EMU_ENTRY(softmax_bwd) RECAP_EMU_ENTRY(log_softmax_gather_fwd)
                      RECAP_EMU_ENTRY(log_softmax_gather_bwd)};
  return table;
}

const std::map<std::string, Binder> &broken_kernels() {
  static const std::map<std::string, Binder> table = {
      {"broken_different_barriers", binder(broken::different_barriers)},
      {"broken_barrier_after_exit", binder(broken::barrier_after_exit)},
      {"broken_different_shuffles", binder(broken::different_shuffles)}};
  return table;
}

}  // namespace emu

// Runs kernel `name` (e.g. "rms_norm_fwd_bf16", or one of `broken_kernels`) over `grid` blocks
// of `block` threads with the arguments `args`, whose kinds `kinds` names (one letter each, as
// `kind_of`). Gives 0, or 1 with the reason in `err` (at most `cap` bytes, nul-ended).
extern "C" int recap_emu_launch(const char *name, const unsigned *grid, const unsigned *block,
                                void **args, const char *kinds, char *err, std::size_t cap) {
  const auto &table = std::string(name).rfind("broken_", 0) == 0 ? emu::broken_kernels()
                                                                  : emu::kernels();
  const auto k = table.find(name);
  int rc = 1;
  if (k == table.end()) {
    emu::error = std::string("no kernel named ") + name;
  } else if (auto call = k->second(args, kinds); call) {
    rc = emu::launch({grid[0], grid[1], grid[2]}, {block[0], block[1], block[2]},
                     std::move(call));
  }
  if (rc != 0 && cap > 0) std::snprintf(err, cap, "%s", emu::error.c_str());
  return rc;
}

// The names of every emulated kernel of recap.cu, separated by commas, nul-ended in `out` (`cap` bytes).
extern "C" void recap_emu_kernels(char *out, std::size_t cap) {
  std::string all;
  for (const auto &k : emu::kernels()) all += (all.empty() ? "" : ",") + k.first;
  if (cap > 0) std::snprintf(out, cap, "%s", all.c_str());
}
