/* cuda_emu.h - CUDA kernels run on the CPU, for tests that need no GPU (C++17, g++).
 *
 * A launch runs its blocks one after another; each thread of a block is a fiber (ucontext)
 * with its own stack, and a fiber switches only where a thread must wait for others: a warp
 * shuffle (every lane of the warp has given its value), __syncthreads, the block's end. So
 * a kernel's own code, its indexing, shared memory, barriers and warp reductions run as
 * written, in a deterministic order. What is not the GPU's: the float arithmetic of the host
 * (the kernels are built with --fmad=false, this with -ffp-contract=off, so the adds and
 * multiplies round alike; fmaf is libm's; -fno-strict-aliasing, as the kernels read floats
 * through float4 pointers), ex2.approx is exp2f with the same flush to zero,
 * and blocks never run at once (a kernel that waits for another block would deadlock here:
 * reported, then abort). Full warps only (blockDim.x a multiple of 32, full shuffle masks); a
 * shuffle whose partner lane is at another shuffle (divergent code) is reported, then abort.
 * Warp collectives: __shfl_sync, __shfl_xor_sync, __any_sync, __syncwarp and the TF32 mma
 * (ptx.cuh's mma_tf32: the products exact, summed in k order; not the tensor core's bits).
 *
 * Use: #include this, then "base.h", "cuda/cuda_common.cuh" and the kernels' .cuh; launch with
 * emu::launch(grid, block, smem_bytes, [&] { kernel<...>(args...); }). */
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

namespace emu {

struct Thread {
    ucontext_t ctx;
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
enum { XWORDS = 6 }; /* the most 32-bit words a lane gives a warp collective (an mma's a and b) */
struct Warp {
    Barrier bar;
    uint32_t buf[2][32][XWORDS]; /* each lane's words, by the barrier generation's parity */
    Site site[2][32];            /* where each lane's collective is (in the kernel's source) */
};

struct State {
    ucontext_t sched;
    std::vector<Thread> threads;
    std::vector<Warp> warps;
    std::vector<std::vector<unsigned char>> stacks;
    std::vector<unsigned char> dyn_smem;
    Barrier block_bar;
    Thread *cur = nullptr;
    uint3 block_idx;
    dim3 block_dim, grid_dim;
    const std::function<void()> *body = nullptr;
    unsigned long long switches = 0; /* fiber switches so far (a test's cost) */
};
inline State g;

enum { STACK_BYTES = 256 << 10 };

[[noreturn]] inline void fatal(const char *what) {
    fprintf(stderr, "cuda_emu: %s\n", what);
    abort();
}

inline unsigned lane() { return (g.cur->tid.x + g.block_dim.x * (g.cur->tid.y + g.block_dim.y * g.cur->tid.z)) & 31; }
inline Warp &warp() { return g.warps[(g.cur->tid.x + g.block_dim.x * (g.cur->tid.y + g.block_dim.y * g.cur->tid.z)) >> 5]; }

/* back to the scheduler until *p != v */
inline void wait_while(const unsigned *p, unsigned v) {
    g.cur->wait_on = p;
    g.cur->wait_val = v;
    g.switches++;
    swapcontext(&g.cur->ctx, &g.sched);
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

inline void thread_main() {
    (*g.body)();
    g.cur->done = true;
    warp().site[0][lane()] = warp().site[1][lane()] = Site{nullptr, 0}; /* a collective that needs this lane now: an error */
    leave(warp().bar);
    leave(g.block_bar);
} /* returns to g.sched (uc_link) */

/* a warp collective: this lane's N words in, every lane's out (valid until this lane's next
 * collective: the buffers alternate by the barrier's generation). A lane of `check` (a lane
 * mask) that is at another collective of the source (divergent code: undefined on the GPU) or
 * has exited is reported, then abort. */
template <int N>
inline const uint32_t (*exchange(unsigned mask, const uint32_t (&mine)[N], Site at, unsigned check))[XWORDS] {
    static_assert(N <= XWORDS, "collective: too many words");
    if (mask != 0xffffffffu) fatal("a warp collective with a partial mask (full warps only)");
    Warp &w = warp();
    const unsigned par = w.bar.gen & 1, me = lane();
    memcpy(w.buf[par][me], mine, sizeof mine);
    w.site[par][me] = at;
    arrive(w.bar);
    for (unsigned l = 0; l < 32; l++) {
        if (!(check >> l & 1)) continue;
        const Site o = w.site[par][l];
        if (o.line != at.line || (o.file != at.file && (!o.file || strcmp(o.file, at.file)))) {
            fprintf(stderr, "cuda_emu: lane %u's warp collective at %s:%d needs lane %u, which is at %s:%d\n", me, at.file, at.line, l,
                    o.file ? o.file : "(exited)", o.line);
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
    const dim3 b = g.block_dim;
    th.tid = {t % b.x, t / b.x % b.y, t / (b.x * b.y)};
    th.done = false;
    th.wait_on = nullptr;
    if (getcontext(&th.ctx)) fatal("getcontext failed");
    th.ctx.uc_stack.ss_sp = g.stacks[t].data();
    th.ctx.uc_stack.ss_size = STACK_BYTES;
    th.ctx.uc_link = &g.sched;
    makecontext(&th.ctx, thread_main, 0);
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
            ran = true;
            if (swapcontext(&g.sched, &th.ctx)) fatal("swapcontext failed");
        }
        if (!left) return;
        if (!ran) fatal("deadlock: every thread of a block waits (a barrier not all threads reach?)");
    }
}

/* runs kernel body f over grid x block threads, the blocks one after another */
template <typename F>
void launch(dim3 grid, dim3 block, size_t smem, F &&f) {
    const unsigned nt = block.x * block.y * block.z;
    if (nt == 0 || nt % 32 || nt > 1024) fatal("launch: the block's threads must be a multiple of 32, at most 1024");
    const std::function<void()> body(f);
    g.body = &body;
    g.block_dim = block;
    g.grid_dim = grid;
    g.threads.assign(nt, Thread());
    g.warps.assign(nt / 32, Warp());
    while (g.stacks.size() < nt) g.stacks.emplace_back(STACK_BYTES);
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                g.block_idx = {bx, by, bz};
                g.dyn_smem.assign(smem, 0xff); /* NaN everywhere: a read before a write shows */
                g.block_bar = {0, 0, nt};
                for (Warp &w : g.warps) w.bar = {0, 0, 32};
                for (unsigned t = 0; t < nt; t++) start_thread(t);
                run_block();
            }
    g.cur = nullptr;
    g.body = nullptr;
}

inline void *dyn_smem() { return g.dyn_smem.data(); }

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

#define threadIdx (emu::g.cur->tid)
#define blockIdx (emu::g.block_idx)
#define blockDim (emu::g.block_dim)
#define gridDim (emu::g.grid_dim)

inline void __syncthreads() { emu::arrive(emu::g.block_bar); }
/* (the default arguments name the kernel's line that calls them) */
inline void __syncwarp(unsigned mask = 0xffffffffu, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    const uint32_t none[1] = {0};
    (void)emu::exchange(mask, none, {file, line}, 0xffffffffu);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return emu::shfl(mask, v, src, {file, line});
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int off, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    return emu::shfl(mask, v, (int)emu::lane() ^ off, {file, line});
}
inline int __any_sync(unsigned mask, int pred, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    const uint32_t mine[1] = {pred != 0};
    const uint32_t (*all)[emu::XWORDS] = emu::exchange(mask, mine, {file, line}, 0xffffffffu);
    for (int l = 0; l < 32; l++)
        if (all[l][0]) return 1;
    return 0;
}

inline float2 make_float2(float x, float y) { return {x, y}; }
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
inline float ex2_ftz(float x) {
    const float y = exp2f(x);
    return y < 0x1p-126f ? 0.0f : y;
}

#endif
