/* ptx.cuh - the inline PTX of the CUDA kernels: loads with cache and ordering qualifiers,
 * programmatic dependent launch, the merge's atomic, L2 bulk prefetch, the SFU's 2^x, the TF32
 * and BF16 mma; and the dynamic shared memory's declaration. Every asm
 * statement that cuda_common.cuh and the attention kernels need is here, so that
 * tests/cuda_emu.h can give the same names in plain C++ and run those kernels on the CPU.
 * Part of backend_cuda.cu's translation unit (through cuda_common.cuh). */

/* a kernel's dynamic shared memory (the launch's smem bytes) as T name[] */
#define DYN_SHARED(T, name) extern __shared__ T name[]

/* weights are read once: past L1 (x stays there) */
__device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

/* Programmatic dependent launch (DSPARK_CUDA_PDL, backend_cuda.cu's launch()): a kernel launched
 * with it may start while the kernel before it in the stream is still running. pdl_wait() returns
 * once that kernel has finished and its writes are visible (and so, since it waited too,
 * everything before it); pdl_trigger() lets the next kernel launch. Every kernel of the backend
 * calls pdl_wait() before it reads or writes anything the kernel before it may touch, and
 * triggers only after its own wait, so once a kernel runs every kernel two or more before it has
 * finished. Before their wait the products load only their constant weights, and attention reads
 * kv_len and slot (copied in at the step's start) and prefetches its K/V rows into L2 (a hint: no
 * value moves). So a launch with or without PDL computes the same bits. Both are no-ops in a
 * kernel launched without it. */
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }

/* 4 floats of an activation (an input written by an earlier kernel), read after pdl_wait: a
 * volatile coherent load. The products read x this way, never with __ldg, and no activation
 * parameter is __restrict__: with PDL an ld.global.nc of a const __restrict__ pointer was
 * moved above the wait (k_matmul_tc gave other bits with PDL on until its x loads were these;
 * test_cuda's test_pdl) */
__device__ __forceinline__ float4 ld_act4(const float4 *p) {
    float4 v;
    asm volatile("ld.global.v4.f32 {%0,%1,%2,%3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "l"(p) : "memory");
    return v;
}
/* one float of an activation, read after pdl_wait (ld_act4's load) */
__device__ __forceinline__ float ld_act(const float *p) {
    float v;
    asm volatile("ld.global.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
    return v;
}
/* 16-byte group of pieces, read after pdl_wait (an activation: ld_act4's load) */
__device__ __forceinline__ uint4 ld_act16(const uint4 *p) {
    uint4 v;
    asm volatile("ld.global.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p) : "memory");
    return v;
}

/* an int of the step's inputs that a copy wrote before the step's kernels (attention's kv_len
 * and slot), read before pdl_wait: ld.global.cv, which tests/pdl_ptx_check.sh allows there */
__device__ __forceinline__ int ld_step_int(const int32_t *p) {
    int v;
    asm volatile("ld.global.cv.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

/* *p += v, acq_rel at GPU scope (one thread's; the merge's turnstile, att_last_block); returns
 * the old value */
__device__ __forceinline__ int atom_add_acq_rel(int *p, int v) {
    int old;
    asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], %2;" : "=r"(old) : "l"(p), "r"(v) : "memory");
    return old;
}

/* bytes (a multiple of 16) from p (16-byte aligned) into L2: a hint that moves no value */
__device__ __forceinline__ void prefetch_l2(const void *p, uint32_t bytes) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
}

/* 2^x on the SFU alone: a weight below 2^-126 of the running max flushes to 0 (CUDA's exp2f
 * adds a denormal fix-up around the same instruction) */
__device__ __forceinline__ float ex2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/* d += a b, m16n8k8 in TF32 (a warp's): lane (g = lane / 4, t = lane % 4) holds a = A[g][t],
 * A[g+8][t], A[g][t+4], A[g+8][t+4]; b = B[t][g], B[t+4][g]; d = D[g][2t], D[g][2t+1],
 * D[g+8][2t], D[g+8][2t+1] */
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* c += a b, m16n8k16 in BF16 (a warp's): lane (g = lane / 4, t = lane % 4) holds a0 = A[g][2t, 2t
 * + 1], a1 = A[g+8][2t, 2t + 1], a2 = A[g][2t + 8, 2t + 9], a3 = A[g+8][2t + 8, 2t + 9] (the
 * smaller k in the low half); b0 = B[2t, 2t + 1][g], b1 = B[2t + 8, 2t + 9][g]; c as mma_tf32's */
__device__ __forceinline__ void mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
