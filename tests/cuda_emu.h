/* cuda_emu.h - CUDA kernels run on the CPU, for tests that need no GPU (C++17, g++).
 *
 * A launch runs its blocks one after another. Each thread of a block is a fiber with its own
 * stack, which gives way only where it must wait for others: a warp collective (every lane of
 * its mask has come), __syncthreads, its end. So a kernel's own code, its indexing, shared
 * memory, barriers and warp reductions run as written, in a deterministic order.
 *
 * What is not the GPU's: the host's float arithmetic (the kernels are built with --fmad=false,
 * this with -ffp-contract=off, so adds and multiplies round alike; fmaf is libm's;
 * -fno-strict-aliasing, as the kernels read floats through float4 pointers); ex2.approx is
 * exp2f with the same flush to zero; the mma sums its exact products in k order; and blocks
 * never run at once (a kernel that waits for another block deadlocks here: reported, then
 * abort).
 *
 * Warp collectives: __shfl_sync, _xor, _up, __any_sync, __syncwarp and ptx.cuh's TF32
 * and BF16 mma. The lanes of a mask meet apart from the others (a half-warp its own). A
 * collective that needs a lane which is at another collective (divergent code), has exited or
 * is past the block's threads is reported, then abort.
 *
 * Use: #include this, then "base.h", "cuda/cuda_common.cuh" and the kernels' .cuh; launch with
 * emu::launch(grid, block, smem_bytes, [&] { kernel<...>(args...); }). tests/emu/ builds the
 * whole backend on it. */
#ifndef DSPARK_CUDA_EMU_H
#define DSPARK_CUDA_EMU_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <functional>
#include <vector>

/* ---- the language: qualifiers, built-in variables, vector types ---- */
#define DS_CUDA_EMU 1
#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static /* blocks run one at a time: one copy serves each in turn */

struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct __half { uint16_t bits; };
struct alignas(4) __half2 { __half x, y; };
struct __nv_bfloat16 { uint16_t bits; };
struct alignas(4) __nv_bfloat162 { __nv_bfloat16 x, y; };

/* the built-in variables: one fiber runs at a time, and the scheduler sets these for it */
inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

/* Fibers switch by a few instructions on x86-64 (the callee-saved registers, the stack pointer,
 * the FP control words: what a call may not clobber); swapcontext also makes a system call for
 * the signal mask (test_attention_emu: 33 s with it, 3.5 s without). Under AddressSanitizer,
 * which follows swapcontext only, and elsewhere: ucontext. */
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define EMU_FAST_SWITCH 1
/* saves this fiber's state on its stack and *from = its stack pointer, then resumes to's */
extern "C" void emu_switch(void **from, void *to);
__asm__(".text\n"
        ".weak emu_switch\n"
        ".type emu_switch,@function\n"
        "emu_switch:\n"
        "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
        "  subq $8, %rsp\n  stmxcsr (%rsp)\n  fnstcw 4(%rsp)\n"
        "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
        "  ldmxcsr (%rsp)\n  fldcw 4(%rsp)\n  addq $8, %rsp\n"
        "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
        "  ret\n"
        ".size emu_switch, .-emu_switch\n");
#endif

namespace emu {

inline float bits_f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline uint32_t f_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

struct Thread {
#ifdef EMU_FAST_SWITCH
    void *sp; /* its saved stack pointer (emu_switch) */
#else
    ucontext_t ctx;
#endif
    uint3 tid;
    bool done;
    const unsigned *wait_on; /* waiting until *wait_on != wait_val (a barrier's generation) */
    unsigned wait_val;
};

/* a barrier of `live` threads: the last to arrive opens it (gen + 1) */
struct Barrier {
    unsigned gen, arrived, live;
};

struct Site {
    const char *file;
    int line;
};
enum { XWORDS = 6 };       /* the most 32-bit words a lane gives a warp collective (an mma's a and b) */
enum : unsigned { NONE = ~0u };
/* the lanes of one mask of a warp that meet at collectives (a half-warp's shuffles: its own) */
struct Group {
    unsigned mask;
    Barrier bar;
    uint32_t buf[2][32][XWORDS]; /* each lane's words, by the barrier generation's parity */
    Site site[2][32];            /* where each lane's collective is (in the kernel's source) */
    unsigned left[32];           /* the generation at which a lane exited (0: before the group was); NONE: running */
};
enum { MAX_GROUPS = 8 };
struct Warp {
    unsigned running;            /* the lanes that exist and have not exited */
    int n_groups;
    Group groups[MAX_GROUPS];    /* (an array: a waiting fiber holds a pointer into one) */
};

struct State {
#ifdef EMU_FAST_SWITCH
    void *sched_sp;
#else
    ucontext_t sched;
#endif
    std::vector<Thread> threads;
    std::vector<Warp> warps;
    std::vector<std::vector<unsigned char>> stacks;
    std::vector<unsigned char> dyn_smem;
    Barrier block_bar;
    Thread *cur = nullptr;
    const std::function<void()> *body = nullptr;
    unsigned long long switches = 0; /* fiber switches so far (a test's cost) */
};
inline State g;

enum { STACK_BYTES = 256 << 10 };

[[noreturn]] inline void fatal(const char *what) {
    fprintf(stderr, "cuda_emu: %s\n", what);
    abort();
}

inline unsigned flat_tid() { return g.cur->tid.x + blockDim.x * (g.cur->tid.y + blockDim.y * g.cur->tid.z); }
inline unsigned lane() { return flat_tid() & 31; }
inline Warp &warp() { return g.warps[flat_tid() >> 5]; }

/* back to the scheduler until *p != v */
inline void wait_while(const unsigned *p, unsigned v) {
    g.cur->wait_on = p;
    g.cur->wait_val = v;
    g.switches++;
#ifdef EMU_FAST_SWITCH
    emu_switch(&g.cur->sp, g.sched_sp);
#else
    swapcontext(&g.cur->ctx, &g.sched);
#endif
}

inline void arrive(Barrier &b) {
    const unsigned my = b.gen;
    if (++b.arrived == b.live) {
        b.arrived = 0;
        b.gen++;
    } else {
        wait_while(&b.gen, my);
    }
}

/* a thread leaves: the barriers it would have completed open without it */
inline void leave(Barrier &b) {
    b.live--;
    if (b.arrived && b.arrived == b.live) {
        b.arrived = 0;
        b.gen++;
    }
}

/* the warp's group of mask (made at its first collective) */
inline Group &group(Warp &w, unsigned mask) {
    for (int i = 0; i < w.n_groups; i++)
        if (w.groups[i].mask == mask) return w.groups[i];
    if (w.n_groups == MAX_GROUPS) fatal("more than 8 shuffle masks in a warp");
    Group &gr = w.groups[w.n_groups++];
    gr.mask = mask;
    gr.bar = {0, 0, (unsigned)__builtin_popcount(mask & w.running)};
    for (unsigned l = 0; l < 32; l++) gr.left[l] = w.running >> l & 1 ? (unsigned)NONE : 0u;
    return gr;
}

inline void thread_main() {
    (*g.body)();
    g.cur->done = true;
    Warp &w = warp();
    const unsigned me = lane();
    w.running &= ~(1u << me);
    for (int i = 0; i < w.n_groups; i++) /* a collective of this generation or later that needs this lane: an error */
        if (w.groups[i].mask >> me & 1) {
            w.groups[i].left[me] = w.groups[i].bar.gen;
            leave(w.groups[i].bar);
        }
    leave(g.block_bar);
} /* returns to g.sched (uc_link; fiber_entry with the fast switch) */

#ifdef EMU_FAST_SWITCH
/* a fiber's first frame: thread_main, then back to the scheduler for good */
[[noreturn]] inline void fiber_entry() {
    thread_main();
    void *dead;
    emu_switch(&dead, g.sched_sp);
    __builtin_unreachable();
}
#endif

/* a collective of mask's lanes: this lane's N words in, every lane's out (valid until this
 * lane's next collective: the buffers alternate by the barrier's generation). A lane of `check`
 * that is at another collective of the source (divergent code: undefined on the GPU) or has
 * exited is reported, then abort. */
template <int N>
inline const uint32_t (*exchange(unsigned mask, const uint32_t (&mine)[N], Site at, unsigned check))[XWORDS] {
    static_assert(N <= XWORDS, "collective: too many words");
    const unsigned me = lane();
    if (!(mask >> me & 1)) fatal("a warp collective whose mask leaves out the calling lane");
    Group &w = group(warp(), mask);
    const unsigned gen = w.bar.gen, par = gen & 1;
    memcpy(w.buf[par][me], mine, sizeof mine);
    w.site[par][me] = at;
    arrive(w.bar);
    check &= mask;
    for (unsigned l = 0; l < 32; l++) {
        if (!(check >> l & 1)) continue;
        const Site o = w.site[par][l];
        if (w.left[l] != NONE && w.left[l] <= gen) {
            fprintf(stderr, "cuda_emu: lane %u's warp collective at %s:%d needs lane %u, which has exited or is past the block's threads\n", me,
                    at.file, at.line, l);
            abort();
        }
        if (o.line != at.line || (o.file != at.file && (!o.file || strcmp(o.file, at.file)))) {
            fprintf(stderr, "cuda_emu: lane %u's warp collective at %s:%d needs lane %u, which is at %s:%d\n", me, at.file, at.line, l,
                    o.file ? o.file : "?", o.line);
            abort();
        }
    }
    return w.buf[par];
}

/* value v of every lane; returns lane src's */
template <typename T>
inline T shfl(unsigned mask, T v, int src, Site at) {
    static_assert(sizeof(T) <= 8, "shuffle: 8 bytes at most");
    uint32_t mine[2] = {0, 0};
    memcpy(mine, &v, sizeof(T));
    const uint32_t (*all)[XWORDS] = exchange(mask, mine, at, 1u << (src & 31));
    T r;
    memcpy(&r, all[src & 31], sizeof(T));
    return r;
}

/* TF32: the top 19 bits of a float (the mma ignores the low 13 of the mantissa) */
inline float tf32_of(uint32_t u) {
    float f;
    u &= 0xffffe000u;
    memcpy(&f, &u, 4);
    return f;
}

/* mma.sync m16n8k16 .bf16 (ptx.cuh's fragment layout): each product is exact in float (8-bit
 * mantissas), summed in k order, then added to c */
inline void mma_m16n8k16_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1, Site at) {
    const uint32_t mine[6] = {a0, a1, a2, a3, b0, b1};
    const uint32_t (*all)[XWORDS] = exchange(0xffffffffu, mine, at, 0xffffffffu);
    const int g = (int)lane() >> 2, t = (int)lane() & 3;
    /* A[r][k]: lane (r % 8) 4 + (k % 8) / 2, word (k / 8) 2 + r / 8, half k % 2; B[k][n]: lane
     * 4 n + (k % 8) / 2, word 4 + k / 8, half k % 2 */
    auto half = [](uint32_t w, int h) { return bits_f((h ? w >> 16 : w & 0xffffu) << 16); };
    for (int e = 0; e < 4; e++) {
        const int r = g + 8 * (e >> 1), n = 2 * t + (e & 1);
        float sum = 0.0f;
        for (int k = 0; k < 16; k++)
            sum += half(all[(r & 7) * 4 + ((k & 7) >> 1)][(k >> 3) * 2 + (r >> 3)], k & 1) *
                   half(all[4 * n + ((k & 7) >> 1)][4 + (k >> 3)], k & 1);
        c[e] += sum;
    }
}

/* mma.sync m16n8k8 .tf32 (ptx.cuh's fragment layout): each product is exact in float (11-bit
 * mantissas), summed in k order, then added to d (the tensor core's order is its own) */
inline void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], Site at) {
    const uint32_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    const uint32_t (*all)[XWORDS] = exchange(0xffffffffu, mine, at, 0xffffffffu);
    const int g = (int)lane() >> 2, t = (int)lane() & 3;
    /* A[r][k]: lane (r % 8) 4 + k % 4, word (k / 4) 2 + r / 8; B[k][n]: lane 4 n + k % 4, word 4 + k / 4 */
    for (int e = 0; e < 4; e++) {
        const int r = g + 8 * (e >> 1), n = 2 * t + (e & 1);
        float sum = 0.0f;
        for (int k = 0; k < 8; k++)
            sum += tf32_of(all[(r & 7) * 4 + (k & 3)][(k >> 2) * 2 + (r >> 3)]) * tf32_of(all[4 * n + (k & 3)][4 + (k >> 2)]);
        d[e] += sum;
    }
}

/* thread t of the block, ready to run thread_main on its own stack (not inlined: getcontext
 * returns twice, and the launch's loop variables are not to be in its frame) */
__attribute__((noinline)) inline void start_thread(unsigned t) {
    Thread &th = g.threads[t];
    const dim3 b = blockDim;
    th.tid = {t % b.x, t / b.x % b.y, t / (b.x * b.y)};
    th.done = false;
    th.wait_on = nullptr;
#ifdef EMU_FAST_SWITCH
    /* the stack as emu_switch leaves it: the FP control words, six registers, fiber_entry as the
     * return address and a zero one above it, so fiber_entry starts as if called (rsp = 8 mod 16) */
    uintptr_t top = ((uintptr_t)g.stacks[t].data() + STACK_BYTES) & ~(uintptr_t)15;
    uint64_t *sp = (uint64_t *)top - 9;
    memset(sp, 0, 9 * sizeof *sp);
    uint32_t csr;
    uint16_t cw;
    __asm__ volatile("stmxcsr %0\n fnstcw %1" : "=m"(csr), "=m"(cw));
    memcpy(sp, &csr, 4);
    memcpy((char *)sp + 4, &cw, 2);
    sp[7] = (uint64_t)(uintptr_t)&fiber_entry;
    th.sp = sp;
#else
    if (getcontext(&th.ctx)) fatal("getcontext failed");
    th.ctx.uc_stack.ss_sp = g.stacks[t].data();
    th.ctx.uc_stack.ss_size = STACK_BYTES;
    th.ctx.uc_link = &g.sched;
    makecontext(&th.ctx, thread_main, 0);
#endif
}

/* the scheduler: round robin over the block's threads that can go on, until all are done */
__attribute__((noinline)) inline void run_block() {
    for (;;) {
        bool left = false, ran = false;
        for (Thread &th : g.threads) {
            if (th.done) continue;
            left = true;
            if (th.wait_on && *th.wait_on == th.wait_val) continue;
            th.wait_on = nullptr;
            g.cur = &th;
            threadIdx = th.tid;
            ran = true;
#ifdef EMU_FAST_SWITCH
            emu_switch(&g.sched_sp, th.sp);
#else
            if (swapcontext(&g.sched, &th.ctx)) fatal("swapcontext failed");
#endif
        }
        if (!left) return;
        if (!ran) fatal("deadlock: every thread of a block waits (a barrier not all threads reach?)");
    }
}

/* runs kernel body f over grid x block threads, the blocks one after another */
template <typename F>
void launch(dim3 grid, dim3 block, size_t smem, F &&f) {
    const unsigned nt = block.x * block.y * block.z;
    if (nt == 0 || nt > 1024) fatal("launch: a block has 1 to 1024 threads");
    const std::function<void()> body(f);
    g.body = &body;
    blockDim = block;
    gridDim = grid;
    g.threads.assign(nt, Thread());
    g.warps.assign((nt + 31) / 32, Warp());
    while (g.stacks.size() < nt) g.stacks.emplace_back(STACK_BYTES);
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                blockIdx = {bx, by, bz};
                g.dyn_smem.assign(smem, 0xff); /* NaN everywhere: a read before a write shows */
                g.block_bar = {0, 0, nt};
                for (size_t k = 0; k < g.warps.size(); k++) { /* (the last may be partial) */
                    const unsigned lanes = nt - 32 * (unsigned)k < 32 ? nt - 32 * (unsigned)k : 32;
                    g.warps[k].running = lanes == 32 ? ~0u : (1u << lanes) - 1;
                    g.warps[k].n_groups = 0;
                }
                for (unsigned t = 0; t < nt; t++) start_thread(t);
                run_block();
            }
    g.cur = nullptr;
    g.body = nullptr;
}

inline void *dyn_smem() { return g.dyn_smem.data(); }

inline float half_f(uint16_t h) {
    const uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 31, m = h & 1023;
    if (e == 31) return bits_f(s | 0x7f800000u | (m << 13));
    if (e) return bits_f(s | ((e + 112) << 23) | (m << 13));
    return (s ? -1.0f : 1.0f) * ldexpf((float)m, -24); /* subnormal */
}
inline uint16_t bf16_rn(float f) {
    const uint32_t u = f_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

} // namespace emu


inline void __syncthreads() { emu::arrive(emu::g.block_bar); }
/* (the default arguments name the kernel's line that calls them) */
inline void __syncwarp(unsigned mask = 0xffffffffu, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    const uint32_t none[1] = {0};
    (void)emu::exchange(mask, none, {file, line}, 0u); /* (no partner: the mask's lanes that run meet) */
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return emu::shfl(mask, v, src, {file, line});
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int off, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return emu::shfl(mask, v, (int)emu::lane() ^ off, {file, line});
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned d, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    const int l = (int)emu::lane();
    return emu::shfl(mask, v, l >= (int)d ? l - (int)d : l, {file, line});
}
/* atomics: a fiber gives way only at a collective or barrier, so a read-modify-write is atomic */
template <typename T>
inline T atomicAdd(T *p, T v) {
    const T old = *p;
    *p = old + v;
    return old;
}
inline void __threadfence() {}
inline int __any_sync(unsigned mask, int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    const uint32_t mine[1] = {pred != 0};
    const uint32_t (*all)[emu::XWORDS] = emu::exchange(mask, mine, {file, line}, 0xffffffffu);
    for (int l = 0; l < 32; l++)
        if (all[l][0]) return 1;
    return 0;
}

inline float2 make_float2(float x, float y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline float __uint_as_float(uint32_t u) { return emu::bits_f(u); }
inline uint32_t __float_as_uint(float f) { return emu::f_bits(f); }
inline float __half2float(__half h) { return emu::half_f(h.bits); }
inline float2 __half22float2(__half2 h) { return {emu::half_f(h.x.bits), emu::half_f(h.y.bits)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) { return {{emu::bf16_rn(lo)}, {emu::bf16_rn(hi)}}; }
template <typename T>
inline T __ldg(const T *p) { return *p; }
template <typename T>
inline T __ldcg(const T *p) { return *p; }

/* ---- ptx.cuh's functions, in plain C++ ---- */
#define DYN_SHARED(T, name) T *name = (T *)emu::dyn_smem()
inline uint4 ld_stream(const uint4 *p) { return *p; }
inline void pdl_wait() {}
inline void pdl_trigger() {}
inline float4 ld_act4(const float4 *p) { return *p; }
inline float ld_act(const float *p) { return *p; }
inline uint4 ld_act16(const uint4 *p) { return *p; }
inline int ld_step_int(const int32_t *p) { return *p; }
inline int atom_add_acq_rel(int *p, int v) {
    const int old = *p;
    *p = old + v;
    return old;
}
inline void prefetch_l2(const void *p, uint32_t bytes) {
    if (((uintptr_t)p & 15) || (bytes & 15)) emu::fatal("prefetch_l2: address and size must be multiples of 16");
}
inline void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const char *file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
    emu::mma_m16n8k8_tf32(d, a, b, {file, line});
}
inline void mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1,
                     const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    emu::mma_m16n8k16_bf16(c, a0, a1, a2, a3, b0, b1, {file, line});
}
inline float ex2_ftz(float x) {
    const float y = exp2f(x);
    return y < 0x1p-126f ? 0.0f : y;
}

#endif
