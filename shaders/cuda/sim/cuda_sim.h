// A CPU simulator for the g4rt CUDA kernels: the CUDA builtins the kernels use, for a plain C++
// compiler (g++), so the very same .cu sources run without a GPU (runtime/backends/cuda_sim.py
// compiles each file with this header force-included).
//
// Execution model, as CUDA specifies it:
//   - a grid of blocks; blocks run one after another on each worker OS thread (several workers
//     take blocks from a shared counter), so `__shared__` variables are `static thread_local`;
//   - every CUDA thread of a block is a fiber with its own stack (own context switch on x86-64,
//     ucontext elsewhere); a fiber runs until it reaches a barrier or a warp-collective op;
//   - `__syncthreads()` releases when every live thread of the block has arrived;
//     `__syncwarp()` and `__shfl_*_sync` release when every lane of the warp has arrived, and
//     the shuffles then exchange values as the hardware would;
//   - misuse the hardware leaves undefined is reported as an error instead of being "lucky":
//     a warp-collective op whose mask names exited lanes or lanes that are absent, lanes of one
//     warp waiting at different collectives, a barrier that can never release (deadlock).
// Threads run in order (0, 1, 2, ...) as far as each can go, so a missing barrier shows up as a
// thread reading shared memory that the others have not written yet.
//
// What it does not model: timing, memory coalescing, the L1/L2 caches, bank conflicts, fused
// multiply-add contraction (nvcc/NVRTC fuse a*b+c; g++ here does not, so results differ from a
// GPU's in the last bits), and out-of-bounds accesses (the emulated driver checks every pointer
// argument against its allocations; overruns inside an allocation's padding are not seen).
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <sys/mman.h>
// Fiber switching: 8 instructions of our own on x86-64, glibc's ucontext elsewhere (or with
// -DG4SIM_UCONTEXT, which is how the fallback is tested on x86-64).
#if defined(__x86_64__) && !defined(G4SIM_UCONTEXT)
#define G4SIM_OWN_SWITCH 1
#else
#define G4SIM_OWN_SWITCH 0
#include <ucontext.h>
#endif

#ifndef G4RT_CPU_SIM
#define G4RT_CPU_SIM 1
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static thread_local

struct uint3 { unsigned x, y, z; };
struct __attribute__((aligned(16))) uint4 { unsigned x, y, z, w; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(8))) float2 { float x, y; };

static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
// __expf: glibc declares it already (the same function as expf)
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
static inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
static inline int __float2int_rn(float x) { return (int)nearbyintf(x); }   // ties to even
// result byte n = byte (s >> 4n) & 7 of the 8 bytes {y:x} (the default PRMT mode)
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const unsigned long long v = (unsigned long long)x | ((unsigned long long)y << 32);
    unsigned r = 0;
    for (int n = 0; n < 4; n++) r |= (unsigned)((v >> (8 * ((s >> (4 * n)) & 7u))) & 0xFFu) << (8 * n);
    return r;
}

namespace g4sim {

enum State { RUN = 0, AT_BARRIER = 1, AT_WARP_OP = 2, DONE = 3 };
enum WarpOp { OP_SYNCWARP = 1, OP_SHFL = 2 };

struct Fiber {
    void* sp = nullptr;              // saved stack pointer (x86-64)
#if !G4SIM_OWN_SWITCH
    ucontext_t uc;
#endif
    uint3 tid{0, 0, 0};
    int lane = 0, warp = 0;
    int state = DONE;
    int op = 0;                      // the warp-collective op it waits at
    unsigned mask = 0;
    uint64_t val = 0, res = 0;       // shuffle: the value offered, the value received
    int src = 0;                     // shuffle: the lane read from
};

typedef void (*Thunk)(const uint64_t* slots);

struct Launch {
    Thunk thunk;
    const uint64_t* slots;
    uint3 grid, block;
};

// One per worker OS thread: fibers and their stacks (reused by every block it runs).
struct Worker {
    static const size_t STACK = 256 * 1024;      // per fiber; a guard page below each
    static const size_t GUARD = 4096;
    std::vector<Fiber> fibers;
    char* stacks = nullptr;
    size_t nstacks = 0;
    void* sched_sp = nullptr;
#if !G4SIM_OWN_SWITCH
    ucontext_t sched_uc;
#endif
    const Launch* launch = nullptr;
    Fiber* cur = nullptr;
    uint3 block_idx{0, 0, 0};
    std::string error;

    ~Worker() {
        if (stacks) munmap(stacks, nstacks * (STACK + GUARD));
    }
    bool reserve(size_t n) {
        if (n <= nstacks) return true;
        if (stacks) munmap(stacks, nstacks * (STACK + GUARD));
        const size_t bytes = n * (STACK + GUARD);
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            stacks = nullptr;
            nstacks = 0;
            return false;
        }
        stacks = (char*)p;
        nstacks = n;
        for (size_t i = 0; i < n; i++) mprotect(stacks + i * (STACK + GUARD), GUARD, PROT_NONE);
        fibers.resize(n);
        return true;
    }
    char* stack_top(size_t i) { return stacks + (i + 1) * (STACK + GUARD); }
};

inline thread_local Worker* tw = nullptr;

}  // namespace g4sim

#define threadIdx (g4sim::tw->cur->tid)
#define blockIdx (g4sim::tw->block_idx)
#define blockDim (g4sim::tw->launch->block)
#define gridDim (g4sim::tw->launch->grid)

// ---- context switching --------------------------------------------------------------------
#if G4SIM_OWN_SWITCH
extern "C" void g4sim_switch(void** save_sp, void* new_sp);
extern "C" void g4sim_trampoline();
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores
// the stack pointer, switches to the other stack and restores the same from it.
// A new fiber's stack is prepared so that the first switch "returns" into g4sim_trampoline,
// which calls r13(r12).
asm(R"(
    .text
    .globl g4sim_switch
    .hidden g4sim_switch
    .type g4sim_switch, @function
g4sim_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size g4sim_switch, .-g4sim_switch

    .globl g4sim_trampoline
    .hidden g4sim_trampoline
    .type g4sim_trampoline, @function
g4sim_trampoline:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size g4sim_trampoline, .-g4sim_trampoline
)");
#endif

namespace g4sim {

inline void fiber_main(void* arg);
#if !G4SIM_OWN_SWITCH
inline void fiber_main_uc();
#endif

inline void start_fiber(Worker& w, size_t i) {
    Fiber& f = w.fibers[i];
#if G4SIM_OWN_SWITCH
    uintptr_t top = (uintptr_t)w.stack_top(i) & ~(uintptr_t)15;
    uint64_t* sp = (uint64_t*)(top - 80);        // 16-byte aligned; rsp after `ret` = sp + 64
    const uint32_t mxcsr = 0x1F80, fpucw = 0x037F;
    sp[0] = (uint64_t)mxcsr | ((uint64_t)fpucw << 32);
    sp[1] = 0;                                    // r15
    sp[2] = 0;                                    // r14
    sp[3] = (uint64_t)(uintptr_t)&fiber_main;     // r13: function
    sp[4] = (uint64_t)(uintptr_t)&f;              // r12: argument
    sp[5] = 0;                                    // rbx
    sp[6] = 0;                                    // rbp
    sp[7] = (uint64_t)(uintptr_t)&g4sim_trampoline;
    sp[8] = 0;
    f.sp = sp;
#else
    getcontext(&f.uc);
    f.uc.uc_stack.ss_sp = w.stack_top(i) - Worker::STACK;
    f.uc.uc_stack.ss_size = Worker::STACK;
    f.uc.uc_link = nullptr;
    makecontext(&f.uc, (void (*)())fiber_main_uc, 0);
#endif
}

#if !G4SIM_OWN_SWITCH
inline void fiber_main_uc() { fiber_main(tw->cur); }
#endif

inline void resume(Worker& w, Fiber& f) {
    w.cur = &f;
#if G4SIM_OWN_SWITCH
    g4sim_switch(&w.sched_sp, f.sp);
#else
    swapcontext(&w.sched_uc, &f.uc);
#endif
}

// From a fiber back to the scheduler.
inline void yield() {
    Worker& w = *tw;
#if G4SIM_OWN_SWITCH
    g4sim_switch(&w.cur->sp, w.sched_sp);
#else
    swapcontext(&w.cur->uc, &w.sched_uc);
#endif
}

inline void fiber_main(void* arg) {
    Fiber* f = (Fiber*)arg;
    Worker& w = *tw;
    w.launch->thunk(w.launch->slots);
    f->state = DONE;
    yield();
    std::abort();                                 // a finished fiber is never resumed
}

inline bool fail(Worker& w, const std::string& msg) {
    if (w.error.empty()) w.error = msg;
    return false;
}

inline std::string where(const Worker& w) {
    char b[96];
    std::snprintf(b, sizeof b, "block (%u,%u,%u)", w.block_idx.x, w.block_idx.y, w.block_idx.z);
    return b;
}

// Releases the warp-collective ops of warp `wi` once all its lanes are there. Returns true when
// it released the warp; false when it could not (yet), with w.error set on misuse.
inline bool release_warp(Worker& w, int wi, int n) {
    const int l0 = 32 * wi, len = n - l0 < 32 ? n - l0 : 32;
    Fiber* F = &w.fibers[l0];
    int waiting = 0, at_barrier = 0;
    for (int l = 0; l < len; l++) {
        waiting += F[l].state == AT_WARP_OP;
        at_barrier += F[l].state == AT_BARRIER;
    }
    if (!waiting) return false;
    char b[256];
    if (at_barrier) {
        std::snprintf(b, sizeof b, "%s warp %d: some lanes wait at __syncthreads, others at a warp "
                      "collective (divergent collectives deadlock)", where(w).c_str(), wi);
        return fail(w, b);
    }
    const unsigned present = len == 32 ? 0xffffffffu : ((1u << len) - 1u);
    unsigned live = 0;
    for (int l = 0; l < len; l++)
        if (F[l].state != DONE) live |= 1u << l;
    for (int l = 0; l < len; l++) {
        if (F[l].state != AT_WARP_OP) continue;
        if (F[l].mask & ~present) {
            std::snprintf(b, sizeof b, "%s warp %d lane %d: a warp collective with mask %#x names "
                          "lanes that do not exist (the warp has %d threads)", where(w).c_str(), wi, l,
                          F[l].mask, len);
            return fail(w, b);
        }
        if (!(F[l].mask & (1u << l))) {
            std::snprintf(b, sizeof b, "%s warp %d lane %d: a warp collective with mask %#x that "
                          "does not name the calling lane", where(w).c_str(), wi, l, F[l].mask);
            return fail(w, b);
        }
        if (F[l].mask & ~live) {
            std::snprintf(b, sizeof b, "%s warp %d lane %d: a warp collective with mask %#x names "
                          "lanes that have exited (live %#x)", where(w).c_str(), wi, l, F[l].mask, live);
            return fail(w, b);
        }
    }
    // every lane named by the masks must be waiting, at the same op
    unsigned want = 0;
    for (int l = 0; l < len; l++)
        if (F[l].state == AT_WARP_OP) want |= F[l].mask;
    for (int l = 0; l < len; l++) {
        if (!(want & (1u << l))) continue;
        if (F[l].state != AT_WARP_OP) return false;          // not there yet
    }
    int op = -1;
    for (int l = 0; l < len; l++) {
        if (!(want & (1u << l))) continue;
        if (op < 0) op = F[l].op;
        if (F[l].op != op || F[l].mask != want) {
            std::snprintf(b, sizeof b, "%s warp %d: lanes wait at different warp collectives or "
                          "with different masks (lane %d: op %d mask %#x; expected op %d mask %#x)",
                          where(w).c_str(), wi, l, F[l].op, F[l].mask, op, want);
            return fail(w, b);
        }
    }
    for (int l = 0; l < len; l++) {
        if (!(want & (1u << l))) continue;
        if (op == OP_SHFL) {
            int s = F[l].src;
            if (s < 0 || s >= len || !(want & (1u << s))) s = l;   // out of range: own value
            F[l].res = F[s].val;
        }
    }
    for (int l = 0; l < len; l++)
        if (want & (1u << l)) F[l].state = RUN;
    return true;
}

// Runs one block to completion. False (w.error set) on a deadlock or a collective misuse.
inline bool run_block(Worker& w, uint3 bidx) {
    const Launch& L = *w.launch;
    const int n = (int)(L.block.x * L.block.y * L.block.z);
    w.block_idx = bidx;
    for (int i = 0; i < n; i++) {
        Fiber& f = w.fibers[i];
        f.tid = uint3{(unsigned)(i % L.block.x), (unsigned)((i / L.block.x) % L.block.y),
                      (unsigned)(i / (L.block.x * L.block.y))};
        f.lane = i & 31;
        f.warp = i >> 5;
        f.state = RUN;
        start_fiber(w, i);
    }
    const int nwarps = (n + 31) / 32;
    for (;;) {
        for (int i = 0; i < n; i++)
            while (w.fibers[i].state == RUN) resume(w, w.fibers[i]);
        bool released = false;
        for (int wi = 0; wi < nwarps; wi++) {
            if (release_warp(w, wi, n)) released = true;
            else if (!w.error.empty()) return false;
        }
        if (released) continue;
        int done = 0, barrier = 0;
        for (int i = 0; i < n; i++) {
            done += w.fibers[i].state == DONE;
            barrier += w.fibers[i].state == AT_BARRIER;
        }
        if (done == n) return true;
        if (barrier + done == n) {                // every live thread is at __syncthreads
            for (int i = 0; i < n; i++)
                if (w.fibers[i].state == AT_BARRIER) w.fibers[i].state = RUN;
            continue;
        }
        char b[200];
        std::snprintf(b, sizeof b, "%s: deadlock: %d of %d threads finished, %d at __syncthreads, "
                      "%d at warp collectives that cannot complete", where(w).c_str(), done, n,
                      barrier, n - done - barrier);
        return fail(w, b);
    }
}

// Thread-safe: blocks are taken from a shared counter by `workers` OS threads.
inline std::string launch(Thunk thunk, const uint64_t* slots, uint3 grid, uint3 block, int workers) {
    const int n = (int)(block.x * block.y * block.z);
    if (n < 1 || n > 1024) return "bad block size";
    const long long nblocks = (long long)grid.x * grid.y * grid.z;
    if (nblocks < 1) return "empty grid";
    Launch L{thunk, slots, grid, block};
    std::atomic<long long> next{0};
    std::atomic<bool> stop{false};
    static std::mutex pool_lock;                  // one launch at a time (ctypes drops the GIL)
    static std::vector<std::unique_ptr<Worker>> pool;
    std::lock_guard<std::mutex> guard(pool_lock);
    const int nw = (int)std::min<long long>(workers > 0 ? workers : 1, nblocks);
    while ((int)pool.size() < nw) pool.emplace_back(new Worker());
    std::vector<std::string> errors((size_t)nw);
    auto body = [&](int wid) {
        Worker& w = *pool[(size_t)wid];
        w.error.clear();
        if (!w.reserve((size_t)n)) {
            errors[wid] = "cannot map fiber stacks";
            stop = true;
            return;
        }
        w.launch = &L;
        Worker* saved = tw;
        tw = &w;
        for (;;) {
            if (stop) break;
            const long long b = next.fetch_add(1);
            if (b >= nblocks) break;
            const uint3 bi{(unsigned)(b % grid.x), (unsigned)((b / grid.x) % grid.y),
                           (unsigned)(b / ((long long)grid.x * grid.y))};
            if (!run_block(w, bi)) {
                errors[wid] = w.error;
                stop = true;
                break;
            }
        }
        tw = saved;
    };
    if (nw <= 1) {
        body(0);
    } else {
        std::vector<std::thread> ts;
        for (int i = 0; i < nw; i++) ts.emplace_back(body, i);
        for (auto& t : ts) t.join();
    }
    for (auto& e : errors)
        if (!e.empty()) return e;
    return "";
}

// ---- the collectives, called from kernel code (inside a fiber) ------------------------------
inline uint64_t warp_collective(int op, unsigned mask, uint64_t val, int src) {
    Fiber* f = tw->cur;
    f->op = op;
    f->mask = mask;
    f->val = val;
    f->src = src;
    f->state = AT_WARP_OP;
    yield();
    return f->res;
}

template <typename T> inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    uint64_t u = 0;
    std::memcpy(&u, &v, sizeof(T));
    return u;
}
template <typename T> inline T from_bits(uint64_t u) {
    T v;
    std::memcpy(&v, &u, sizeof(T));
    return v;
}

// Kernel arguments from 64-bit parameter slots (the bytes cuLaunchKernel would copy).
template <typename T> inline T arg_from_slot(uint64_t s) {
    if constexpr (std::is_pointer<T>::value) {
        return reinterpret_cast<T>((uintptr_t)s);
    } else if constexpr (std::is_same<T, float>::value) {
        return from_bits<float>(s & 0xffffffffu);
    } else if constexpr (std::is_same<T, double>::value) {
        return from_bits<double>(s);
    } else {
        static_assert(std::is_integral<T>::value && sizeof(T) == 4, "kernel parameter type");
        return (T)(uint32_t)s;
    }
}
template <typename T> inline char sig_letter() {
    if constexpr (std::is_pointer<T>::value) return 'P';
    else if constexpr (std::is_same<T, float>::value) return 'f';
    else if constexpr (std::is_same<T, double>::value) return 'd';
    else return 'i';
}
template <typename... A, size_t... I>
inline void call_with_slots(void (*k)(A...), const uint64_t* s, std::index_sequence<I...>) {
    k(arg_from_slot<A>(s[I])...);
}
template <typename... A> inline void invoke(void (*k)(A...), const uint64_t* s) {
    call_with_slots(k, s, std::index_sequence_for<A...>{});
}
template <typename... A> inline std::string signature_of(void (*)(A...)) {
    return std::string{sig_letter<A>()...};
}

struct Entry {
    const char* name;
    Thunk thunk;
    std::string (*signature)();
};

}  // namespace g4sim

inline void __syncthreads() {
    g4sim::tw->cur->state = g4sim::AT_BARRIER;
    g4sim::yield();
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    g4sim::warp_collective(g4sim::OP_SYNCWARP, mask, 0, 0);
}
template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int o, int width = 32) {
    const int lane = g4sim::tw->cur->lane;
    const int src = width == 32 ? (lane ^ o) : ((lane ^ o) & (width - 1)) | (lane & ~(width - 1));
    return g4sim::from_bits<T>(g4sim::warp_collective(g4sim::OP_SHFL, mask, g4sim::to_bits(v), src));
}
template <typename T> inline T __shfl_down_sync(unsigned mask, T v, unsigned o, int width = 32) {
    const int lane = g4sim::tw->cur->lane;
    const int seg = lane & ~(width - 1);
    const int src = (lane - seg) + (int)o < width ? lane + (int)o : lane;
    return g4sim::from_bits<T>(g4sim::warp_collective(g4sim::OP_SHFL, mask, g4sim::to_bits(v), src));
}
template <typename T> inline T __shfl_up_sync(unsigned mask, T v, unsigned o, int width = 32) {
    const int lane = g4sim::tw->cur->lane;
    const int seg = lane & ~(width - 1);
    const int src = lane - (int)o >= seg ? lane - (int)o : lane;
    return g4sim::from_bits<T>(g4sim::warp_collective(g4sim::OP_SHFL, mask, g4sim::to_bits(v), src));
}
template <typename T> inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    const int lane = g4sim::tw->cur->lane;
    const int src = (lane & ~(width - 1)) + (src_lane & (width - 1));
    return g4sim::from_bits<T>(g4sim::warp_collective(g4sim::OP_SHFL, mask, g4sim::to_bits(v), src));
}

// The kernel table of a compiled file: G4SIM_KERNEL(name) once per kernel, between BEGIN/END.
#define G4SIM_KERNELS_BEGIN static const g4sim::Entry g4sim_entries[] = {
#define G4SIM_KERNEL(name)                                                                    \
    {#name,                                                                                   \
     [](const uint64_t* s) {                                                                  \
         g4sim::invoke(&name, s);                                                             \
     },                                                                                       \
     []() { return g4sim::signature_of(&name); }},
#define G4SIM_KERNELS_END                                                                     \
    };                                                                                        \
    extern "C" __attribute__((visibility("default"))) int g4sim_count() {                     \
        return (int)(sizeof(g4sim_entries) / sizeof(g4sim_entries[0]));                       \
    }                                                                                         \
    extern "C" __attribute__((visibility("default"))) const char* g4sim_name(int i) {         \
        return g4sim_entries[i].name;                                                         \
    }                                                                                         \
    extern "C" __attribute__((visibility("default"))) int g4sim_signature(int i, char* out, int cap) { \
        const std::string s = g4sim_entries[i].signature();                                   \
        std::snprintf(out, (size_t)cap, "%s", s.c_str());                                     \
        return (int)s.size();                                                                 \
    }                                                                                         \
    extern "C" __attribute__((visibility("default"))) int g4sim_launch(                       \
            int i, const uint64_t* slots, const unsigned* dims, int workers, char* err, int cap) { \
        const std::string e = g4sim::launch(g4sim_entries[i].thunk, slots,                    \
                                            uint3{dims[0], dims[1], dims[2]},                 \
                                            uint3{dims[3], dims[4], dims[5]}, workers);       \
        if (e.empty()) return 0;                                                              \
        std::snprintf(err, (size_t)cap, "%s", e.c_str());                                     \
        return 1;                                                                             \
    }
