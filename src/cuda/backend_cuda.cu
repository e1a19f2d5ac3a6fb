/* backend_cuda.cu - the Backend interface on one NVIDIA GPU (see backend_cuda.h).
 *
 * Every buffer is device memory; every op is queued on one stream and only to_host and
 * synchronize wait for it. Weights are copied to the GPU in their own dtype (BF16 stays BF16,
 * F32 stays F32) and widened to F32 in registers; activations are F32 throughout.
 *
 * Arithmetic (compiled with --fmad=false, so nothing is fused unless written as fmaf):
 *   matmul     BF16 weights, <= CUDA_SMALL_N rows, K % 32 == 0, aligned: k_matmul_tc, tensor
 *              cores with x split into 3 bf16 pieces (its comment says the arithmetic; the
 *              same for every row count and launch setting). Otherwise:
 *              (<= CUDA_SMALL_N rows) blocks of 256 threads over C output columns and all
 *              rows of the call, each weight chunk loaded once per block for a chunk of up to
 *              8 rows; thread t sums k = 8t.. in steps of 2048 (or k = t.. in steps of 256 when
 *              rows are not 16-byte aligned), then warp_sum's fixed xor tree per warp (many
 *              values at once) and the 8 warps in order: the same for every row whatever the
 *              number of rows, C, or the launch variant (persistent, x in shared memory,
 *              several weights in one launch); k_matmul_ref, the previous kernel, is kept as
 *              the reference they are tested bitwise against.
 * Step graphs: qwen3_forward (and drafter.c's block and heads) bracket their ops with
 * graph_begin/graph_end; they are recorded as a CUDA graph per key (token count, drafter
 * step) and exact argument list and replayed (see GraphRec).
 *   rmsnorm    ss = sum(x^2) / dim, r = 1 / sqrtf(ss + eps), out = w * (x * r), as the CPU.
 *   rope       the CPU's float32 inverse frequencies (computed on the host with powf), then
 *              cosf/sinf on the device (within an ulp or two of glibc's).
 *   attention  per (token, head) 8 blocks, block z taking the 64-key chunks z, z + 8, ... and
 *              its warp w the keys w, w + 8, ... of them, online softmax; warps then blocks
 *              merged in order. The split depends on the key count only, never on n.
 *   elementwise ops are the CPU's expressions; add, ew, gather, embed and kv_write are
 *   bitwise the CPU's results. */
#include "backend_cuda.h"
#include "sample_cuda.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- errors: a failing CUDA call inside an op is a device fault, not a user error ---- */

static void cuda_fatal(cudaError_t e, const char *what, const char *file, int line) {
    fprintf(stderr, "dspark: CUDA error in %s (%s:%d): %s\n", what, file, line, cudaGetErrorString(e));
    abort();
}
#define CU(call) do { cudaError_t _e = (call); if (_e != cudaSuccess) cuda_fatal(_e, #call, __FILE__, __LINE__); } while (0)
/* DSPARK_CUDA_SYNC=1: wait after every op, so a fault names the op that made it */
static bool g_sync_each;
/* a stream capture is under way (graph_begin .. graph_end); a launch that fails then spoils
 * the capture (graph_end drops it and has the ops run eagerly) instead of aborting */
static bool g_capturing, g_capture_broken;
#define LAUNCHED(what) do { cudaError_t _e = cudaGetLastError(); \
    if (_e != cudaSuccess && g_capturing) { g_capture_broken = true; break; } \
    if (_e == cudaSuccess && g_sync_each) _e = cudaDeviceSynchronize(); \
    if (_e != cudaSuccess) cuda_fatal(_e, what, __FILE__, __LINE__); } while (0)

/* ---- cuBLAS, opened at run time (the binary must start where no CUDA library exists) ---- */

typedef struct {
    void *lib;
    decltype(&cublasCreate_v2) create;
    decltype(&cublasDestroy_v2) destroy;
    decltype(&cublasSetStream_v2) set_stream;
    decltype(&cublasSetMathMode) set_math_mode;
    decltype(&cublasSgemm_v2) sgemm;
    cublasHandle_t h;
} Cublas;

static bool cublas_open(Cublas *c, cudaStream_t stream) {
    memset(c, 0, sizeof *c);
    const char *env = getenv("DSPARK_CUDA_CUBLAS");
    if (env && strcmp(env, "0") == 0) return false;
    const char *names[] = {getenv("DSPARK_CUBLAS_LIB"), "libcublas.so.13", "libcublas.so"};
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !c->lib; i++)
        if (names[i]) c->lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!c->lib) return false;
    c->create = (decltype(c->create))dlsym(c->lib, "cublasCreate_v2");
    c->destroy = (decltype(c->destroy))dlsym(c->lib, "cublasDestroy_v2");
    c->set_stream = (decltype(c->set_stream))dlsym(c->lib, "cublasSetStream_v2");
    c->set_math_mode = (decltype(c->set_math_mode))dlsym(c->lib, "cublasSetMathMode");
    c->sgemm = (decltype(c->sgemm))dlsym(c->lib, "cublasSgemm_v2");
    /* CUBLAS_DEFAULT_MATH never uses TF32 (that takes CUBLAS_TF32_TENSOR_OP_MATH) */
    if (!c->create || !c->destroy || !c->set_stream || !c->set_math_mode || !c->sgemm || c->create(&c->h) != CUBLAS_STATUS_SUCCESS ||
        c->set_stream(c->h, stream) != CUBLAS_STATUS_SUCCESS || c->set_math_mode(c->h, CUBLAS_DEFAULT_MATH) != CUBLAS_STATUS_SUCCESS) {
        if (c->h) c->destroy(c->h);
        dlclose(c->lib);
        memset(c, 0, sizeof *c);
        return false;
    }
    return true;
}

/* ---- backend state ---- */

typedef struct {
    float theta;
    int head_dim;
    float *inv_freq;   /* device, [head_dim / 2] */
} RopeFreq;

#define N_ROPE_TABLES 8
/* step graphs kept (least recently used replaced): the target's token counts and, per
 * request's drafter state, its block and each slot's head (the engine's default 8 requests at
 * block 7: 8 x 8 drafter records next to the target's) */
#define N_GRAPHS 256

/* Step graphs (backend.h's graph_begin / graph_end). A bracket runs in one mode:
 *   EAGER    ops run as called: the first bracket of a key (so the buffers that grow on first
 *            use, att_part and the rope tables, are made outside any capture), keys above
 *            CUDA_SMALL_N (cuBLAS), and the retry after a failed capture;
 *   CAPTURE  the stream is captured into a CUDA graph, instantiated and launched at graph_end;
 *   CHECK    ops only log their arguments; graph_end launches the record of the same key,
 *            epoch and argument log, or returns false (the caller issues the ops again, and
 *            they are captured).
 * Every op logs every argument (pointers, sizes, scalars) in every mode, so a record is only
 * replayed for exactly the calls it was captured from; what changes from step to step is in
 * device buffers (token ids, positions, slots, kv lengths, logit rows), which a replay reads.
 * epoch: bumped when a buffer that records may point to (att_part, a rope table) is freed. */
/* how products of <= CUDA_SMALL_N rows are launched (none of it changes a value) */
typedef struct {
    bool ref;      /* DSPARK_CUDA_MATMUL_REF=1: the previous kernel (and no matmul_multi) */
    bool persist;  /* this call: k_matmul_pf (16-bit weights, vector path) */
    bool persist_b[4]; /* persist by bucket, n = 1, 2, 3-4, 5-64 (DSPARK_CUDA_MM_PERSIST) */
    bool chunk4;   /* n > 4 in chunks of 4 rows, not 8 (DSPARK_CUDA_MM_CHUNK=4) */
    bool multi;    /* matmul_multi on (DSPARK_CUDA_MM_MULTI=0: off) */
    int cols[4];   /* columns per block by bucket (DSPARK_CUDA_MM_COLS) */
    int tc;        /* BF16 tensor-core product with x in tc bf16 pieces (DSPARK_CUDA_MM_TC: 0 off, 1-3; 3) */
    int tc_mt[5];  /* its 16-row tiles per block by bucket n = 1, 2-8, 9-16, 17-32, 33-64 (DSPARK_CUDA_TC_MT; 0 auto) */
    int tc_deep;   /* k-steps per round: 1 twice, 2 half the default (DSPARK_CUDA_TC_DEEP) */
    int tc_pf;     /* bytes of each weight row prefetched into L2 at block start (DSPARK_CUDA_TC_PREFETCH, KB; 0 off) */
    bool sk;       /* the streamed tensor-core product k_matmul_sk (DSPARK_CUDA_MM_SK=R,...; off: k_matmul_tc) */
    int sk_ring, sk_kps, sk_ipb; /* its ring stages, k-steps per warp and stage, items per block (0 auto) */
    bool sk_tma;                 /* stages brought in by bulk copies (TMA) instead of cp.async */
    int sk_smem_max;             /* dynamic shared memory a block may take */
    float *sk_scratch;           /* its part sums (device) */
    size_t sk_scratch_floats;
    int *sk_count, sk_count_n;   /* its per-tile counters (device, zero between launches) */
    bool pdl;      /* kernels launched with programmatic stream serialization (DSPARK_CUDA_PDL=0: off) */
    int nsm;
} MmCfg;

enum { G_OFF = 0, G_EAGER, G_CHECK, G_CAPTURE };
typedef struct {
    int key;
    unsigned epoch;
    size_t len;
    unsigned char *log;
    cudaGraphExec_t exec;  /* NULL: free slot */
    uint64_t used;
} GraphRec;
#define WIDE_ELEMS ((size_t)16 << 20)  /* cuBLAS path: 64 MB of widened weight rows at a time */

typedef struct {
    cudaStream_t stream;
    Cublas blas;
    bool have_blas;
    float *wide;       /* [WIDE_ELEMS], allocated at the first large BF16/F16 product */
    float *att_part;   /* attention partial results of the largest call so far */
    size_t att_cap;    /* floats in att_part */
    int *att_count;    /* the fused merge's counters, one per (token, head) of att_part's calls */
    size_t att_count_n;
    bool fuse;         /* fused ops and fusions inside ops (backend_cuda_set_fused) */
    int att_gqa_min;   /* k_attention with a KV head's query heads per block from this many tokens on (DSPARK_CUDA_ATT) */
    RopeFreq rope[N_ROPE_TABLES];
    int rope_next;
    MmCfg mm;
    int g_mode, g_key, g_next; /* the bracket's mode; g_next: the mode the next bracket must take */
    unsigned epoch;
    unsigned char *g_log;      /* this bracket's argument log */
    size_t g_len, g_cap;
    GraphRec rec[N_GRAPHS];
    uint64_t g_clock;
    bool seen[CUDA_SMALL_N + 1 + GRAPH_KEYS_DRAFT]; /* by graph_key_index */
    long g_captures, g_replays, g_misses;
    char info[512];
} CudaImpl;

static CudaImpl *impl(Backend *be) { return (CudaImpl *)be->impl; }
static cudaStream_t stream_of(Backend *be) { return impl(be)->stream; }

static void glog_bytes(CudaImpl *c, const void *p, size_t n) {
    if (c->g_len + n > c->g_cap) {
        size_t cap = c->g_cap ? 2 * c->g_cap : 65536;
        while (cap < c->g_len + n) cap *= 2;
        c->g_log = (unsigned char *)ds_realloc(c->g_log, cap);
        DS_ASSERT(c->g_log);
        c->g_cap = cap;
    }
    memcpy(c->g_log + c->g_len, p, n);
    c->g_len += n;
}
/* every op first: inside a bracket, log op id and arguments; true: only checking, do not launch */
template <typename... A>
static bool graph_skip(Backend *be, int op, const A &...a) {
    CudaImpl *c = impl(be);
    if (c->g_mode == G_OFF) return false;
    glog_bytes(c, &op, sizeof op);
    (glog_bytes(c, &a, sizeof a), ...);
    return c->g_mode == G_CHECK;
}
/* memory calls have no place in a bracket (backend.h): a caller's bug, said at once */
static void graph_outside(Backend *be, const char *what) {
    if (impl(be)->g_mode == G_OFF) return;
    fprintf(stderr, "dspark: cuda: %s inside graph_begin .. graph_end\n", what);
    abort();
}
/* a buffer that records may point to is about to be freed: no record of the old epoch is
 * replayed again (their execs are destroyed here, after the stream is idle) */
static void graphs_new_epoch(CudaImpl *c) {
    c->epoch++;
    CU(cudaStreamSynchronize(c->stream));
    for (int i = 0; i < N_GRAPHS; i++)
        if (c->rec[i].exec) {
            CU(cudaGraphExecDestroy(c->rec[i].exec));
            ds_free(c->rec[i].log);
            memset(&c->rec[i], 0, sizeof c->rec[i]);
        }
}

static inline unsigned blocks_for(size_t n, unsigned per) {
    size_t b = (n + per - 1) / per;
    return (unsigned)(b < 1 ? 1 : b > 65536 ? 65536 : b);
}

/* ---- memory ---- */

static void *cu_alloc(Backend *be, size_t bytes) {
    graph_outside(be, "alloc");
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 256) != cudaSuccess) {
        cudaGetLastError(); /* clear it: the caller reports out of memory */
        return NULL;
    }
    CU(cudaMemsetAsync(p, 0, bytes, stream_of(be)));
    return p;
}
static void cu_free(Backend *be, void *p) {
    graph_outside(be, "free");
    if (p) CU(cudaFree(p));
}
/* from pageable host memory the copy has read src when this returns (CUDA staging), so the
 * caller may reuse src at once; the kernels after it on the stream see the data */
static void cu_to_device(Backend *be, void *dst, const void *src, size_t bytes) {
    graph_outside(be, "to_device");
    if (bytes) CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_of(be)));
}
static void cu_to_host(Backend *be, void *dst, const void *src, size_t bytes) {
    graph_outside(be, "to_host");
    if (bytes) CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_of(be)));
    CU(cudaStreamSynchronize(stream_of(be)));
}
static void cu_copy(Backend *be, void *dst, const void *src, size_t bytes) {
    if (graph_skip(be, 1, dst, src, bytes)) return;
    if (bytes && dst != src) CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_of(be)));
}
static void cu_sync(Backend *be) { graph_outside(be, "synchronize"); CU(cudaStreamSynchronize(stream_of(be))); }

static ds_status cu_upload_weight(Backend *be, Weight *w, char *err) {
    graph_outside(be, "upload_weight");
    if (w->dev) return DS_OK;
    if (w->dtype != DS_F32 && w->dtype != DS_BF16 && w->dtype != DS_F16)
        return ds_err(err, DS_EUNSUPPORTED, "cuda: %s weights are not supported (F32, BF16 or F16)", ds_dtype_name(w->dtype));
    size_t bytes = (size_t)w->rows * w->cols * ds_dtype_size(w->dtype);
    void *p = NULL;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
        cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        return ds_err(err, DS_ENOMEM, "cuda: out of GPU memory for a %dx%d %s weight (%.1f MB; %.1f of %.1f GB free)", w->rows, w->cols,
                      ds_dtype_name(w->dtype), bytes / 1e6, free_b / 1e9, total_b / 1e9);
    }
    /* on our stream: a legacy-stream copy from pageable memory may still be in flight when it
     * returns, and our non-blocking stream would not wait for it */
    cudaError_t e = cudaMemcpyAsync(p, w->host, bytes, cudaMemcpyHostToDevice, stream_of(be));
    if (e != cudaSuccess) {
        cudaFree(p);
        return ds_err(err, DS_EDEVICE, "cuda: copying a %dx%d weight to the GPU: %s", w->rows, w->cols, cudaGetErrorString(e));
    }
    w->dev = p;
    return DS_OK;
}
static void cu_release_weight(Backend *be, Weight *w) {
    graph_outside(be, "release_weight");
    if (w->dev) CU(cudaFree(w->dev));
    w->dev = NULL;
}

/* ---- device helpers ---- */

__device__ __forceinline__ float bf16_bits(uint32_t hi16) { return __uint_as_float(hi16 << 16); }

/* element i of a weight of dtype dt (DS_F32, DS_BF16, DS_F16) */
__device__ __forceinline__ float weight_at(const void *w, int dt, size_t i) {
    if (dt == DS_BF16) return bf16_bits(((const uint16_t *)w)[i]);
    if (dt == DS_F16) return __half2float(((const __half *)w)[i]);
    return ((const float *)w)[i];
}

/* 8 consecutive weights from element i (16-byte aligned for BF16/F16, 32 for F32) */
template <int DT>
__device__ __forceinline__ void load8(const void *w, size_t i, float *o) {
    if (DT == DS_F32) {
        const float4 *p = (const float4 *)((const float *)w + i);
        float4 a = __ldg(p), b = __ldg(p + 1);
        o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w; o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
    } else {
        uint4 u = __ldg((const uint4 *)((const uint16_t *)w + i));
        uint32_t v[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            if (DT == DS_BF16) {
                o[2 * j] = __uint_as_float(v[j] << 16);
                o[2 * j + 1] = __uint_as_float(v[j] & 0xffff0000u);
            } else {
                __half2 h = *(const __half2 *)&v[j];
                float2 f = __half22float2(h);
                o[2 * j] = f.x;
                o[2 * j + 1] = f.y;
            }
        }
    }
}

/* 8 weights of a 16-bit dtype from one 16-byte load, as load8 widens them */
template <int DT>
__device__ __forceinline__ void unpack8(uint4 u, float *o) {
    float t[8];
    const uint32_t v[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int j = 0; j < 4; j++) {
        if (DT == DS_BF16) {
            t[2 * j] = __uint_as_float(v[j] << 16);
            t[2 * j + 1] = __uint_as_float(v[j] & 0xffff0000u);
        } else {
            const float2 f = __half22float2(*(const __half2 *)&v[j]);
            t[2 * j] = f.x;
            t[2 * j + 1] = f.y;
        }
    }
#pragma unroll
    for (int j = 0; j < 8; j++) o[j] = t[j];
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int off = 16; off; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

/* warp_sum of N independent values at once (each value's arithmetic is warp_sum's; the N
 * shuffle chains interleave instead of waiting on each other) */
template <int N>
__device__ __forceinline__ void warp_sum_n(float (&v)[N]) {
#pragma unroll
    for (int off = 16; off; off >>= 1)
#pragma unroll
        for (int i = 0; i < N; i++) v[i] += __shfl_xor_sync(0xffffffffu, v[i], off);
}

/* swiglu's value (k_swiglu and k_matmul_tc's paired store) */
__device__ __forceinline__ float silu_mul(float g, float u) { return (g / (1.0f + expf(-g))) * u; }

/* ---- kernels ---- */

/* Programmatic dependent launch (DSPARK_CUDA_PDL, launch() below): a kernel launched with it may
 * start while the kernel before it in the stream is still running. pdl_wait() returns once that
 * kernel has finished and its writes are visible (and so, since it waited too, everything
 * before it); pdl_trigger() lets the next kernel launch. Every kernel in this file calls
 * pdl_wait() before it reads or writes anything an earlier kernel touches (the products load
 * only their constant weights before it), so a launch with or without PDL computes the same
 * bits. Both are no-ops in a kernel launched without it. */
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
/* the start of a kernel with nothing to do before its inputs are ready */
__device__ __forceinline__ void pdl_start() {
    pdl_wait();
    pdl_trigger();
}


__global__ void k_embed(float *out, const void *table, int dt, const int32_t *ids, int cols) {
    pdl_start();
    const int i = blockIdx.x;
    const size_t row = (size_t)ids[i] * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) out[(size_t)i * cols + c] = weight_at(table, dt, row + c);
}

/* The previous product kernel, kept as the reference the new one must equal bitwise
 * (DSPARK_CUDA_MATMUL_REF=1 selects it; tests/test_cuda.c compares the two).
 * out[i][o] = sum_k x[i][k] w[o][k] for i < n <= NB and R columns o0.. per block of 256
 * threads. Thread t sums k = 8t.. in steps of 2048 (scalar path: k = t.. in steps of 256), then
 * each warp's lanes by a fixed xor tree and the 8 warps in order: every (i, o) gets the same
 * arithmetic whatever n, NB and R are. R > 1 reuses each x load for R columns. */
template <int NB, int R, int DT, bool VEC>
__global__ void __launch_bounds__(256) k_matmul_ref(float *__restrict__ out, const float *__restrict__ x, const void *__restrict__ w,
                                                int n, int K, int O) {
    pdl_start();
    __shared__ float part[8][R * NB];
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5, o0 = blockIdx.x * R;
    float acc[R][NB];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int i = 0; i < NB; i++) acc[r][i] = 0.0f;
    size_t wo[R];
#pragma unroll
    for (int r = 0; r < R; r++) wo[r] = (size_t)(o0 + r < O ? o0 + r : O - 1) * K;
    if (VEC) {
        for (int k0 = t * 8; k0 < K; k0 += 2048) {
            float wv[R][8];
#pragma unroll
            for (int r = 0; r < R; r++) load8<DT>(w, wo[r] + k0, wv[r]);
#pragma unroll
            for (int i = 0; i < NB; i++) {
                if (i < n) {
                    const float4 *xp = (const float4 *)(x + (size_t)i * K + k0);
                    const float4 a = __ldg(xp), b = __ldg(xp + 1);
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        float s = acc[r][i];
                        s = fmaf(a.x, wv[r][0], s); s = fmaf(a.y, wv[r][1], s); s = fmaf(a.z, wv[r][2], s); s = fmaf(a.w, wv[r][3], s);
                        s = fmaf(b.x, wv[r][4], s); s = fmaf(b.y, wv[r][5], s); s = fmaf(b.z, wv[r][6], s); s = fmaf(b.w, wv[r][7], s);
                        acc[r][i] = s;
                    }
                }
            }
        }
    } else {
        for (int k = t; k < K; k += 256) {
            float wv[R];
#pragma unroll
            for (int r = 0; r < R; r++) wv[r] = weight_at(w, DT, wo[r] + k);
#pragma unroll
            for (int i = 0; i < NB; i++)
                if (i < n) {
                    const float xv = x[(size_t)i * K + k];
#pragma unroll
                    for (int r = 0; r < R; r++) acc[r][i] = fmaf(xv, wv[r], acc[r][i]);
                }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int i = 0; i < NB; i++)
            if (i < n) { /* n is the same for the whole block */
                const float v = warp_sum(acc[r][i]);
                if (lane == 0) part[warp][r * NB + i] = v;
            }
    __syncthreads();
    for (int q = t; q < R * NB; q += 256) {
        const int r = q / NB, i = q % NB;
        if (i < n && o0 + r < O) {
            float v = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; j++) v += part[j][q];
            out[(size_t)i * O + o0 + r] = v;
        }
    }
}

/* warp_sum's tree (lanes l and l ^ off added at off = 16, 8, 4, 2, 1) for each of M values
 * at once. While a lane still holds several values, the lanes with bit `off` set keep the upper
 * half of them and the others the lower half, each adding its partner's copy: M values cost
 * about M shuffles instead of 5 M, and every value gets exactly the pairs (and, float addition
 * commuting, the bits) of warp_sum. LIVE: values still held per lane. Afterwards a lane holds
 * values base + q for q < LIVE (LIVE = max(M / 32, 1)); *base is accumulated here. */
template <int M, int LIVE, int OFF>
__device__ __forceinline__ void warp_sum_multi_level(float (&a)[M], int lane, int &base) {
    if constexpr (OFF > 0) {
        if constexpr (LIVE > 1) {
            constexpr int H = LIVE / 2;
            const bool up = (lane & OFF) != 0;
#pragma unroll
            for (int q = 0; q < H; q++) {
                const float keep = up ? a[q + H] : a[q], send = up ? a[q] : a[q + H];
                a[q] = keep + __shfl_xor_sync(0xffffffffu, send, OFF);
            }
            if (up) base += H;
            warp_sum_multi_level<M, H, OFF / 2>(a, lane, base);
        } else {
            a[0] += __shfl_xor_sync(0xffffffffu, a[0], OFF);
            warp_sum_multi_level<M, 1, OFF / 2>(a, lane, base);
        }
    }
}
/* returns base: this lane holds the sums of values base .. base + max(M / 32, 1) - 1; when
 * M < 32 the lanes that differ only in the low bits hold copies and lane & (32 / M - 1) == 0
 * is the one to write */
template <int M>
__device__ __forceinline__ int warp_sum_multi(float (&a)[M], int lane) {
    int base = 0;
    warp_sum_multi_level<M, M, 16>(a, lane, base);
    return base;
}

/* out[i][o] = sum_k x[i][k] w[o][k] for i < n (rows in chunks of NB) and C columns o0.. per
 * block of 256 threads: the block reads its columns' weights once per chunk of rows (once per
 * call for n <= NB) and applies each load to all rows of the chunk. Per (i, o) the arithmetic
 * is exactly k_matmul_ref's: thread t sums k = 8t.. in steps of 2048 with the same fmaf order
 * (scalar path: k = t.. in steps of 256), each warp's 32 partial sums go through warp_sum's
 * tree (warp_sum_multi, many values at once), then the 8 warps are added in order from 0. So
 * every row's result is bitwise the same whatever n, NB and C are. */
/* The products' shared steps. fma8_rows: acc[c * NB + i] += x row i's 8 values from k times
 * wv[c], eight fmaf in k order, for the nr valid rows. reduce_store: each thread's partial
 * sums through warp_sum_multi's tree, then the 8 warps in order, into out[i][o0 + c]
 * (rows of this chunk). Both are one arithmetic for every kernel and launch setting. */
template <int NB, int C>
__device__ __forceinline__ void fma8_rows(float (&acc)[C * NB], const float *xb, int K, int k, int nr, const float (*wv)[8]) {
#pragma unroll
    for (int i = 0; i < NB; i++) {
        if (i < nr) {
            const float4 *xp = (const float4 *)(xb + (size_t)i * K + k);
            const float4 a = __ldg(xp), b = __ldg(xp + 1);
#pragma unroll
            for (int c = 0; c < C; c++) {
                float s = acc[c * NB + i];
                s = fmaf(a.x, wv[c][0], s); s = fmaf(a.y, wv[c][1], s); s = fmaf(a.z, wv[c][2], s); s = fmaf(a.w, wv[c][3], s);
                s = fmaf(b.x, wv[c][4], s); s = fmaf(b.y, wv[c][5], s); s = fmaf(b.z, wv[c][6], s); s = fmaf(b.w, wv[c][7], s);
                acc[c * NB + i] = s;
            }
        }
    }
}
template <int NB, int C>
__device__ __forceinline__ void reduce_store(float (&acc)[C * NB], float (*part)[C * NB], int t, int nr, int o0, int O, float *out) {
    constexpr int M = C * NB, PER = M < 32 ? 1 : M / 32, COPY_MASK = M < 32 ? 32 / M - 1 : 0;
    const int lane = t & 31, warp = t >> 5;
    const int base = warp_sum_multi<M>(acc, lane);
    if ((lane & COPY_MASK) == 0) {
#pragma unroll
        for (int q = 0; q < PER; q++) part[warp][base + q] = acc[q];
    }
    __syncthreads();
    for (int q = t; q < M; q += 256) {
        const int c = q / NB, i = q % NB;
        if (i < nr && o0 + c < O) {
            float v = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; j++) v += part[j][q];
            out[(size_t)i * O + o0 + c] = v;
        }
    }
    __syncthreads(); /* part is the next chunk's */
}

template <int NB, int C, int DT, bool VEC>
__device__ __forceinline__ void mm_block(float *__restrict__ out, const float *__restrict__ x, const void *__restrict__ w, int n, int K,
                                         int O, int o0, float (*part)[C * NB]) {
    constexpr int M = C * NB;
    const int t = threadIdx.x;
    size_t wo[C];
#pragma unroll
    for (int c = 0; c < C; c++) wo[c] = (size_t)(o0 + c < O ? o0 + c : O - 1) * K;
    for (int i0 = 0; i0 < n; i0 += NB) {
        const int nr = n - i0 < NB ? n - i0 : NB; /* the same for the whole block */
        const float *xb = x + (size_t)i0 * K;
        float acc[M]; /* [c * NB + i] */
#pragma unroll
        for (int q = 0; q < M; q++) acc[q] = 0.0f;
        if (VEC) {
            for (int k0 = t * 8; k0 < K; k0 += 2048) {
                float wv[C][8];
#pragma unroll
                for (int c = 0; c < C; c++) load8<DT>(w, wo[c] + k0, wv[c]);
                fma8_rows<NB, C>(acc, xb, K, k0, nr, wv);
            }
        } else {
            for (int k = t; k < K; k += 256) {
                float wv[C];
#pragma unroll
                for (int c = 0; c < C; c++) wv[c] = weight_at(w, DT, wo[c] + k);
#pragma unroll
                for (int i = 0; i < NB; i++)
                    if (i < nr) {
                        const float xv = xb[(size_t)i * K + k];
#pragma unroll
                        for (int c = 0; c < C; c++) acc[c * NB + i] = fmaf(xv, wv[c], acc[c * NB + i]);
                    }
            }
        }
        reduce_store<NB, C>(acc, part, t, nr, o0, O, out + (size_t)i0 * O);
    }
}

template <int NB, int C, int DT, bool VEC>
__global__ void __launch_bounds__(256) k_matmul(float *__restrict__ out, const float *__restrict__ x, const void *__restrict__ w,
                                                int n, int K, int O) {
    pdl_start();
    __shared__ float part[8][C * NB];
    mm_block<NB, C, DT, VEC>(out, x, w, n, K, O, blockIdx.x * C, part);
}

/* up to 3 products of one x in one launch (matmul_multi): segment j takes the column groups
 * [g_end[j - 1], g_end[j]); every block is k_matmul's block of its segment, so the values are
 * those of the separate calls, and the small k/v products share a wave with q (gate with up) */
typedef struct {
    float *out[3];
    const void *w[3];
    int O[3], g_end[3], count;
    int act; /* 1 (k_matmul_tc, 2 tiles per block): gate (0) and up (1) row tiles paired, out[0] = silu(gate) * up */
} MmMulti;

/* the segment of column group g (selects, not an index: the parameters stay in registers) */
typedef struct {
    float *out;
    const void *w;
    int O, o0;
} MmSeg;
template <int C>
__device__ __forceinline__ MmSeg mm_segment(const MmMulti &mm, int g) {
    const bool s1 = mm.count > 1 && g >= mm.g_end[0], s2 = mm.count > 2 && g >= mm.g_end[1];
    MmSeg r;
    r.out = s2 ? mm.out[2] : s1 ? mm.out[1] : mm.out[0];
    r.w = s2 ? mm.w[2] : s1 ? mm.w[1] : mm.w[0];
    r.O = s2 ? mm.O[2] : s1 ? mm.O[1] : mm.O[0];
    r.o0 = (g - (s2 ? mm.g_end[1] : s1 ? mm.g_end[0] : 0)) * C;
    return r;
}

template <int NB, int C, int DT, bool VEC>
__global__ void __launch_bounds__(256) k_matmul_multi(MmMulti mm, const float *__restrict__ x, int n, int K) {
    pdl_start();
    __shared__ float part[8][C * NB];
    const MmSeg sg = mm_segment<C>(mm, blockIdx.x);
    mm_block<NB, C, DT, VEC>(sg.out, x, sg.w, n, K, sg.O, sg.o0, part);
}

/* k_matmul (or k_matmul_multi: the segments of mm) for 16-bit weights on the vector path,
 * persistent: a grid of about one wave of blocks, each taking column groups g, g + gridDim.x,
 * ... of all segments, and loading the next group's first weight chunk while it computes and
 * reduces the current one, so weight loads stay in flight between groups. Per (i, o) the
 * arithmetic is k_matmul's (the same chunks in the same order, the same trees), so the
 * results are bitwise equal. */
template <int NB, int C, int DT>
__global__ void __launch_bounds__(256) k_matmul_pf(MmMulti mm, const float *__restrict__ x, int n, int K) {
    pdl_start();
    constexpr int M = C * NB;
    __shared__ float part[8][M];
    const int t = threadIdx.x, k0 = t * 8;
    const int G = mm.count > 2 ? mm.g_end[2] : mm.count > 1 ? mm.g_end[1] : mm.g_end[0];
    uint4 pre[C]; /* the first chunk (k0) of group g's columns */
    int g = blockIdx.x;
    auto prefetch = [&](int gg) {
        if (gg >= G || k0 >= K) return;
        const MmSeg sg = mm_segment<C>(mm, gg);
        const uint16_t *w16 = (const uint16_t *)sg.w;
#pragma unroll
        for (int c = 0; c < C; c++) pre[c] = __ldg((const uint4 *)(w16 + (size_t)(sg.o0 + c < sg.O ? sg.o0 + c : sg.O - 1) * K + k0));
    };
    prefetch(g);
    for (; g < G; g += gridDim.x) {
        const MmSeg sg = mm_segment<C>(mm, g);
        const int O = sg.O, o0 = sg.o0;
        const void *w = sg.w;
        float *out = sg.out;
        size_t wo[C];
#pragma unroll
        for (int c = 0; c < C; c++) wo[c] = (size_t)(o0 + c < O ? o0 + c : O - 1) * K;
        for (int i0 = 0; i0 < n; i0 += NB) {
            const int nr = n - i0 < NB ? n - i0 : NB;
            const float *xb = x + (size_t)i0 * K;
            float acc[M];
#pragma unroll
            for (int q = 0; q < M; q++) acc[q] = 0.0f;
            for (int k = k0; k < K; k += 2048) {
                float wv[C][8];
                if (k == k0 && i0 == 0) {
#pragma unroll
                    for (int c = 0; c < C; c++) unpack8<DT>(pre[c], wv[c]);
                    prefetch(g + gridDim.x); /* in flight during this group's products and trees */
                } else {
#pragma unroll
                    for (int c = 0; c < C; c++) load8<DT>(w, wo[c] + k, wv[c]);
                }
                fma8_rows<NB, C>(acc, xb, K, k, nr, wv);
            }
            reduce_store<NB, C>(acc, part, t, nr, o0, O, out + (size_t)i0 * O);
        }
    }
}

/* ---- the tensor-core product: BF16 weights, <= CUDA_SMALL_N rows (decode and verify) ----
 * out[i][o] = sum_k x[i][k] w[o][k] with mma.sync m16n8k16 (bf16 in, f32 accumulate), "swap
 * AB": A = 16 weight rows x 16 k (W row-major [O][K] is A's row-major layout), B = x^T, 16 k x
 * 8 rows of x (x row-major [n][K] is B's column layout), C = 16 outputs x 8 rows. Lane
 * (g = lane / 4, t = lane % 4) loads 16 bytes of weight rows g and g + 8 at k = 32 j + 8 t
 * (one k-step j covers 32 k: 4 lanes x 8 per row, two mma) and x row g's 8 floats at the same
 * k; the k slots of the two mma are a permutation of those 32 k, the same for A and B, so the
 * fragments come straight from the loads (no shuffles, no shared memory).
 * x is F32: each value is split into P bf16 pieces x = h + m + l (h = bf16(x), m = bf16(x - h),
 * l = bf16(x - h - m); both differences are exact in F32), and each piece's products w * piece
 * are exact in the mma's F32 accumulation, so 3 pieces carry x's whole 24-bit significand
 * (normal floats; a value beyond bf16's largest finite, ~3.39e38, or an inf/NaN gives NaN).
 * Arithmetic of one output, fixed by K alone: k-step j belongs to warp j % 8 of the block; a
 * warp runs, for each of its k-steps in ascending order, mma(first 16 k) with h, m, l, then
 * mma(second 16 k) with h, m, l into one F32 accumulator; the 8 warps' sums are added as
 * ((w0 + w4) + (w2 + w6)) + ((w1 + w5) + (w3 + w7)). Nothing depends on n, on the other rows
 * (an mma's column j reads only column j of B), on MT (16-row tiles per block) or on the
 * segment layout of matmul_multi, so a row's result is bitwise the same alone or in a block.
 * Needs K % 32 == 0 and 16-byte aligned x and w (else the F32-FMA kernel above). */
#define TC_WARPS 8

__device__ __forceinline__ uint32_t bf16x2_rn(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); /* .x (lo) in the low half: the smaller k */
    return *reinterpret_cast<const uint32_t *>(&v);
}
/* 8 floats -> P bf16 pieces, each as 4 packed pairs (pair j: k 2j, 2j + 1) */
template <int P>
__device__ __forceinline__ void tc_split(float (&r)[8], uint32_t (&p)[P][4]) {
#pragma unroll
    for (int q = 0; q < P; q++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const uint32_t u = bf16x2_rn(r[2 * j], r[2 * j + 1]);
            p[q][j] = u;
            if (q + 1 < P) { /* the remainder, exact in F32 */
                r[2 * j] = r[2 * j] - __uint_as_float(u << 16);
                r[2 * j + 1] = r[2 * j + 1] - __uint_as_float(u & 0xffff0000u);
            }
        }
}
__device__ __forceinline__ void mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
/* x, written by the kernel before: a volatile load the compiler keeps after pdl_wait (an
 * ld.global.nc of a const __restrict__ pointer may be hoisted above it) */
__device__ __forceinline__ float4 ld_x4(const float4 *p) {
    float4 v;
    asm volatile("ld.global.v4.f32 {%0,%1,%2,%3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "l"(p) : "memory");
    return v;
}
/* weights are read once: past L1 (x stays there) */
__device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

/* one k-step of one 16-row tile: rows g, g + 8 (lo, hi) times x's 8 values f (split into P
 * pieces), the 32 k into a fresh accumulator, then one F32 add into the sum s: the mma's own
 * accumulation (not IEEE-rounded) spans 2 P mma, not the whole K */
template <int P>
__device__ __forceinline__ void tc_kstep(float *s, uint4 lo, uint4 hi, const uint32_t (&p)[P][4]) {
    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int q = 0; q < P; q++) mma_bf16(c, lo.x, hi.x, lo.y, hi.y, p[q][0], p[q][1]);
#pragma unroll
    for (int q = 0; q < P; q++) mma_bf16(c, lo.z, hi.z, lo.w, hi.w, p[q][2], p[q][3]);
    s[0] = s[0] + c[0]; s[1] = s[1] + c[1]; s[2] = s[2] + c[2]; s[3] = s[3] + c[3];
}
/* the 8 warps' sums in the fixed tree: 4..7 onto 0..3, 2..3 onto 0..1, 1 onto 0 (warp 0 holds
 * the result; every thread of the block must call it) */
template <int T>
__device__ __forceinline__ void tc_warp_tree(float (&acc)[T][4], float4 (*red)[T][32], int warp, int lane) {
#pragma unroll
    for (int s = TC_WARPS / 2; s >= 1; s >>= 1) {
        if (warp >= s && warp < 2 * s)
#pragma unroll
            for (int q = 0; q < T; q++) red[warp - s][q][lane] = make_float4(acc[q][0], acc[q][1], acc[q][2], acc[q][3]);
        __syncthreads();
        if (warp < s)
#pragma unroll
            for (int q = 0; q < T; q++) {
                const float4 v = red[warp][q][lane];
                acc[q][0] = acc[q][0] + v.x; acc[q][1] = acc[q][1] + v.y; acc[q][2] = acc[q][2] + v.z; acc[q][3] = acc[q][3] + v.w;
            }
        __syncthreads();
    }
}
/* warp 0's C fragments into out: acc[mt * NT + nt][0], [1] = output row o0 + 16 mt + g, x rows
 * 8 nt + 2t, + 1; [2], [3] = row + 8 */
template <int MT, int NT>
__device__ __forceinline__ void tc_store(const MmSeg &sg, const float (&acc)[MT * NT][4], int n, int g, int t) {
    float *out = sg.out;
    const int O = sg.O;
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            const float *c = acc[mt * NT + nt];
            const int i = 8 * nt + 2 * t, r0 = sg.o0 + 16 * mt + g, r1 = r0 + 8;
            if (i < n) {
                if (r0 < O) out[(size_t)i * O + r0] = c[0];
                if (r1 < O) out[(size_t)i * O + r1] = c[2];
            }
            if (i + 1 < n) {
                if (r0 < O) out[(size_t)(i + 1) * O + r0] = c[1];
                if (r1 < O) out[(size_t)(i + 1) * O + r1] = c[3];
            }
        }
}

/* the paired store (mm.act): tile 0 holds gate rows o0.., tile 1 the same up rows; up to
 * out[1] as the product alone would write it, silu(gate) * up to out[0] */
template <int NT>
__device__ __forceinline__ void tc_store_swiglu(const MmMulti &mm, int o0, const float (&acc)[2 * NT][4], int n, int g, int t) {
    float *gate = mm.out[0], *up = mm.out[1];
    const int O = mm.O[0];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        const float *cg = acc[nt], *cu = acc[NT + nt];
        const int i = 8 * nt + 2 * t, r0 = o0 + g, r1 = r0 + 8;
#pragma unroll
        for (int e = 0; e < 4; e++) { /* e: (row r0, x row i), (r0, i + 1), (r1, i), (r1, i + 1) */
            const int ii = i + (e & 1), r = e & 2 ? r1 : r0;
            if (ii < n && r < O) {
                const size_t at = (size_t)ii * O + r;
                up[at] = cu[e];
                gate[at] = silu_mul(cg[e], cu[e]);
            }
        }
    }
}

/* one block of 8 warps: MT tiles of 16 output rows (column group blockIdx.x of mm's segments)
 * for NT tiles of 8 rows of x (n <= 8 NT); U k-steps of weights loaded before they are used */
template <int MT, int NT, int P, int U>
__global__ void __launch_bounds__(256) k_matmul_tc(MmMulti mm, const float *__restrict__ x, int n, int K, int pf_bytes) {
    constexpr int T = MT * NT;
    __shared__ float4 red[TC_WARPS / 2][T][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const bool sw = MT == 2 && mm.act; /* gate and up tiles paired */
    const MmSeg sg = sw ? MmSeg{mm.out[0], mm.w[0], mm.O[0], 16 * (int)blockIdx.x} : mm_segment<16 * MT>(mm, blockIdx.x);
    const uint16_t *w = (const uint16_t *)sg.w;
    /* the block's weight rows into L2 at once (a bulk prefetch per row, up to pf_bytes of each):
     * the whole product's bytes are requested from memory at the start, not only what the
     * warps' registers can hold in flight; the warps' loads then mostly hit L2 */
    if (pf_bytes > 0 && !sw && threadIdx.x < 16 * MT && sg.o0 + (int)threadIdx.x < sg.O) {
        const uint32_t bytes = (uint32_t)(2 * K < pf_bytes ? 2 * K : pf_bytes);
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(w + (size_t)(sg.o0 + threadIdx.x) * K), "r"(bytes) : "memory");
    }
    const uint4 *wr[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int r = sg.o0 + (sw ? 0 : 16 * mt) + 8 * h + g;
            const uint16_t *wm = sw && mt == 1 ? (const uint16_t *)mm.w[1] : w;
            wr[mt][h] = (const uint4 *)(wm + (size_t)(r < sg.O ? r : sg.O - 1) * K + 8 * t);
        }
    const float *xr[NT];
    bool xok[NT];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        xok[nt] = 8 * nt + g < n;
        xr[nt] = x + (size_t)(xok[nt] ? 8 * nt + g : 0) * K + 8 * t;
    }
    float acc[T][4];
#pragma unroll
    for (int q = 0; q < T; q++) acc[q][0] = acc[q][1] = acc[q][2] = acc[q][3] = 0.0f;
    const int KS = K / 32;
    /* a round: the weights and x of U k-steps loaded first (all in flight at once), then used;
     * the first round's weights are requested before pdl_wait (x comes from the kernel before) */
    for (int j0 = warp; j0 < KS; j0 += TC_WARPS * U) {
        uint4 wv[U][MT][2];
        float4 xv[U][NT][2];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int j = j0 + TC_WARPS * u;
            if (j < KS)
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    wv[u][mt][0] = ld_stream(wr[mt][0] + (size_t)j * 4);
                    wv[u][mt][1] = ld_stream(wr[mt][1] + (size_t)j * 4);
                }
        }
        if (j0 == warp) pdl_start();
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int j = j0 + TC_WARPS * u;
            if (j < KS) {
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const float4 *xp = (const float4 *)(xr[nt] + (size_t)j * 32);
                    xv[u][nt][0] = xok[nt] ? ld_x4(xp) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                    xv[u][nt][1] = xok[nt] ? ld_x4(xp + 1) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (j0 + TC_WARPS * u >= KS) break;
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const float4 a = xv[u][nt][0], b = xv[u][nt][1];
                float f[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
                uint32_t p[P][4];
                tc_split<P>(f, p);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) tc_kstep<P>(acc[mt * NT + nt], wv[u][mt][0], wv[u][mt][1], p); /* rows g, g + 8 */
            }
        }
    }
    pdl_start(); /* a warp without k-steps */
    tc_warp_tree<T>(acc, red, warp, lane);
    if (warp != 0) return;
    if constexpr (MT == 2)
        if (sw) {
            tc_store_swiglu<NT>(mm, sg.o0, acc, n, g, t);
            return;
        }
    tc_store<MT, NT>(sg, acc, n, g, t);
}

/* ---- the streamed tensor-core product (opt-in, DSPARK_CUDA_MM_SK; BF16, <= CUDA_SMALL_N rows) ----
 * k_matmul_tc's mma layout and x split, with the weights (and, for <= 8 rows, x) brought into
 * shared memory by cp.async through a ring of `ring` stages, so ring - 1 stages (8 KB of
 * weights each) stay in flight per block without registers holding them, and x's latency is
 * hidden with them. Work: a 16-row tile's K is cut into PPT parts of at most SK_PART_KSTEPS
 * k-steps (PPT = 1 up to K 4096), an item is one (tile, part), and a block takes `ipb`
 * consecutive items (a launch setting; no value depends on it). A stage is 8 KPS k-steps of
 * one item; k-step j of a part belongs to warp j % 8, as in k_matmul_tc.
 * Arithmetic of one output, fixed by K (and KPS) alone: per part, each warp's k-steps in
 * ascending order into one F32 sum (each k-step's 6 mma into a fresh accumulator), the 8
 * warps' sums added in k_matmul_tc's tree, then the PPT part sums added in part order (the
 * last block to finish a part of the tile, found by an atomic counter, adds them from
 * `scratch`). So rows stay bitwise the same alone or in a block; with PPT = 1 the values are
 * k_matmul_tc's exactly. Blocks call griddepcontrol.wait after their first weight stages are
 * requested: launched with programmatic stream serialization (DSPARK_CUDA_PDL), the weight
 * loads overlap the end of the kernel before. */
#define SK_PART_KSTEPS 128 /* k-steps per part at most: K 4096 */
#define SK_WPAD 32         /* bf16 of padding per smem weight row: fragment reads hit 8 banks apart */
#define SK_XPAD 4          /* floats of padding per smem x row */
#define SK_MAX_RING 8

typedef struct {
    MmMulti mm;
    const float *x;
    int n, K, KS, SPT, PPT, items, ipb, ring;
    float *scratch; /* [tiles * PPT][NT * 32] float4, PPT > 1 only */
    int *count;     /* [tiles], zero between launches */
} SkArgs;

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
/* wait until at most n groups are pending (n is an immediate in PTX) */
__device__ __forceinline__ void cp_async_wait(int n) {
    switch (n) {
    case 0: asm volatile("cp.async.wait_group 0;" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;" ::: "memory"); break;
    case 3: asm volatile("cp.async.wait_group 3;" ::: "memory"); break;
    case 4: asm volatile("cp.async.wait_group 4;" ::: "memory"); break;
    case 5: asm volatile("cp.async.wait_group 5;" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 6;" ::: "memory"); break;
    }
}
/* the bulk-copy (TMA) producer: one thread requests a stage's rows, an mbarrier per slot
 * counts the bytes in */
__device__ __forceinline__ unsigned smem_u32(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void mbar_init(uint64_t *b, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(b)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
__device__ __forceinline__ void mbar_expect_tx(uint64_t *b, unsigned bytes) {
    asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(b)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t *b, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(b)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t *b, unsigned parity) {
    asm volatile("{\n\t.reg .pred p;\n\tLAB_WAIT:\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n\t@!p bra LAB_WAIT;\n\t}"
                 ::"r"(smem_u32(b)), "r"(parity) : "memory");
}
__device__ __forceinline__ void bulk_g2s(void *dst, const void *src, unsigned bytes, uint64_t *b) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(bytes), "r"(smem_u32(b))
                 : "memory");
}

/* the stages of part p of a tile: [p SPT / PPT, (p + 1) SPT / PPT) */
__device__ __forceinline__ int sk_stage_begin(const SkArgs &a, int part) { return (int)((long long)part * a.SPT / a.PPT); }

template <int NT, int KPS, bool XS, bool TMA>
__global__ void __launch_bounds__(256, 2) k_matmul_sk(SkArgs a) {
    constexpr int KST = 8 * KPS;             /* k-steps per stage */
    constexpr int WROW = 32 * KST + SK_WPAD; /* bf16 per smem weight row */
    constexpr int XROW = 32 * KST + SK_XPAD; /* floats per smem x row */
    constexpr int T = NT;
    extern __shared__ __align__(16) unsigned char sk_smem[];
    __shared__ float4 red[TC_WARPS / 2][T][32];
    __shared__ __align__(8) uint64_t bar[SK_MAX_RING]; /* TMA: slot r's stage is in */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int n = a.n, K = a.K;
    if (TMA) {
        if (tid == 0) {
            for (int r = 0; r < a.ring; r++) mbar_init(&bar[r], 1);
            mbar_fence_init();
        }
        __syncthreads();
    }
    const size_t slot_bytes = (size_t)16 * WROW * 2 + (XS ? (size_t)n * XROW * 4 : 0);
    const int item0 = blockIdx.x * a.ipb, item1 = item0 + a.ipb < a.items ? item0 + a.ipb : a.items;

    /* the issue cursor runs ring - 1 stages ahead of the compute cursor */
    int is_item = item0, is_s = sk_stage_begin(a, item0 % a.PPT), is_end = sk_stage_begin(a, item0 % a.PPT + 1), is_slot = 0;
    auto issue = [&](bool with_x) {
        if (is_item < item1) {
            unsigned char *slot = sk_smem + (size_t)is_slot * slot_bytes;
            const MmSeg sg = mm_segment<16>(a.mm, is_item / a.PPT);
            const uint16_t *w = (const uint16_t *)sg.w;
            const int k0 = is_s * 32 * KST, nk = K - k0 < 32 * KST ? K - k0 : 32 * KST;
            uint16_t *sw = (uint16_t *)slot;
            if (TMA) {
                if (tid == 0) {
                    uint64_t *b = &bar[is_slot];
                    const unsigned bytes = 16u * nk * 2 + (XS && with_x ? (unsigned)n * nk * 4 : 0u);
                    if (with_x) mbar_arrive_expect_tx(b, bytes);
                    else mbar_expect_tx(b, bytes);
                    for (int row = 0; row < 16; row++) {
                        const int r = sg.o0 + row < sg.O ? sg.o0 + row : sg.O - 1;
                        bulk_g2s(sw + row * WROW, w + (size_t)r * K + k0, (unsigned)nk * 2, b);
                    }
                    if (XS && with_x) {
                        float *sx = (float *)(slot + (size_t)16 * WROW * 2);
                        for (int row = 0; row < n; row++) bulk_g2s(sx + row * XROW, a.x + (size_t)row * K + k0, (unsigned)nk * 4, b);
                    }
                }
            } else {
                for (int c = tid; c < 16 * 4 * KST; c += 256) { /* 16-byte chunks: 4 KST per row */
                    const int row = c / (4 * KST), col = c % (4 * KST);
                    const int r = sg.o0 + row < sg.O ? sg.o0 + row : sg.O - 1;
                    if (col * 8 < nk) cp_async16(sw + row * WROW + col * 8, w + (size_t)r * K + k0 + col * 8);
                }
            }
            if (!TMA && XS && with_x) {
                float *sx = (float *)(slot + (size_t)16 * WROW * 2);
                for (int c = tid; c < n * 8 * KST; c += 256) {
                    const int row = c / (8 * KST), col = c % (8 * KST);
                    if (col * 4 < nk) cp_async16(sx + row * XROW + col * 4, a.x + (size_t)row * K + k0 + col * 4);
                }
            }
            if (++is_s == is_end && ++is_item < item1) {
                is_s = sk_stage_begin(a, is_item % a.PPT);
                is_end = sk_stage_begin(a, is_item % a.PPT + 1);
            }
            is_slot = is_slot + 1 == a.ring ? 0 : is_slot + 1;
        }
    };
    auto issue_x = [&](int slot_i, int item, int s) { /* x of a stage whose weights were issued before the wait */
        if (item >= item1) return;
        float *sx = (float *)(sk_smem + (size_t)slot_i * slot_bytes + (size_t)16 * WROW * 2);
        const int k0 = s * 32 * KST, nk = K - k0 < 32 * KST ? K - k0 : 32 * KST;
        if (TMA) { /* the arrive that completes the slot (with x's bytes when x is staged) */
            if (tid == 0) {
                mbar_arrive_expect_tx(&bar[slot_i], XS ? (unsigned)n * nk * 4 : 0u);
                if (XS)
                    for (int row = 0; row < n; row++) bulk_g2s(sx + row * XROW, a.x + (size_t)row * K + k0, (unsigned)nk * 4, &bar[slot_i]);
            }
        } else if (XS) {
            for (int c = tid; c < n * 8 * KST; c += 256) {
                const int row = c / (8 * KST), col = c % (8 * KST);
                if (col * 4 < nk) cp_async16(sx + row * XROW + col * 4, a.x + (size_t)row * K + k0 + col * 4);
            }
        }
    };
    /* prologue: the weights of the first ring - 1 stages (independent of the kernel before),
     * then the wait, then their x, one commit group per stage (the first holds all weights) */
    int pro_item[SK_MAX_RING], pro_s[SK_MAX_RING];
    for (int q = 0; q < a.ring - 1; q++) {
        pro_item[q] = is_item;
        pro_s[q] = is_s;
        issue(false);
    }
    pdl_wait();
    pdl_trigger();
    for (int q = 0; q < a.ring - 1; q++) {
        issue_x(q, pro_item[q], pro_s[q]);
        if (!TMA) cp_async_commit();
    }

    const float *xr[NT];
    bool xok[NT];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        xok[nt] = 8 * nt + g < n;
        xr[nt] = a.x + (size_t)(xok[nt] ? 8 * nt + g : 0) * K + 8 * t;
    }
    float acc[T][4];
#pragma unroll
    for (int q = 0; q < T; q++) acc[q][0] = acc[q][1] = acc[q][2] = acc[q][3] = 0.0f;
    int slot_i = 0;
    unsigned parity = 0; /* TMA: of the slots' barriers in this pass over the ring */
    for (int item = item0; item < item1; item++) {
        const int tile = item / a.PPT, part = item % a.PPT;
        const int s_end = sk_stage_begin(a, part + 1);
        for (int s = sk_stage_begin(a, part); s < s_end; s++) {
            if (TMA) mbar_wait(&bar[slot_i], parity);
            else cp_async_wait(a.ring - 2);
            __syncthreads(); /* this stage is in; every warp is done with the slot issue() refills */
            issue(true);
            if (!TMA) cp_async_commit();
            const unsigned char *slot = sk_smem + (size_t)slot_i * slot_bytes;
            const uint16_t *sw = (const uint16_t *)slot;
            const float *sx = (const float *)(slot + (size_t)16 * WROW * 2);
#pragma unroll
            for (int qk = 0; qk < KPS; qk++) {
                const int m = warp + 8 * qk, j = s * KST + m;
                if (j >= a.KS) break;
                const uint4 lo = *(const uint4 *)(sw + g * WROW + m * 32 + 8 * t);
                const uint4 hi = *(const uint4 *)(sw + (g + 8) * WROW + m * 32 + 8 * t);
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    float4 xa = make_float4(0.0f, 0.0f, 0.0f, 0.0f), xb = xa;
                    if (xok[nt]) {
                        if (XS) {
                            const float4 *xp = (const float4 *)(sx + g * XROW + m * 32 + 8 * t);
                            xa = xp[0];
                            xb = xp[1];
                        } else {
                            const float4 *xp = (const float4 *)(xr[nt] + (size_t)j * 32);
                            xa = __ldg(xp);
                            xb = __ldg(xp + 1);
                        }
                    }
                    float f[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
                    uint32_t p[3][4];
                    tc_split<3>(f, p);
                    tc_kstep<3>(acc[nt], lo, hi, p);
                }
            }
            if (++slot_i == a.ring) {
                slot_i = 0;
                parity ^= 1u;
            }
        }
        tc_warp_tree<T>(acc, red, warp, lane); /* the item's warp sums */
        if (warp == 0) {
            bool write = true;
            if (a.PPT > 1) { /* park this part; the tile's last part to finish adds them in order */
                float4 *sp = (float4 *)a.scratch + (size_t)item * T * 32;
#pragma unroll
                for (int q = 0; q < T; q++) __stcg(sp + q * 32 + lane, make_float4(acc[q][0], acc[q][1], acc[q][2], acc[q][3]));
                __threadfence();
                __syncwarp();
                int done = 0;
                if (lane == 0) done = atomicAdd(a.count + tile, 1) == a.PPT - 1;
                write = __shfl_sync(0xffffffffu, done, 0) != 0;
                if (write) {
                    if (lane == 0) a.count[tile] = 0; /* ready for the next launch */
                    __threadfence();
                    const float4 *tp = (const float4 *)a.scratch + (size_t)tile * a.PPT * T * 32;
#pragma unroll
                    for (int q = 0; q < T; q++) {
                        float4 v = __ldcg(tp + q * 32 + lane);
                        for (int pp = 1; pp < a.PPT; pp++) {
                            const float4 u = __ldcg(tp + ((size_t)pp * T + q) * 32 + lane);
                            v.x = v.x + u.x; v.y = v.y + u.y; v.z = v.z + u.z; v.w = v.w + u.w;
                        }
                        acc[q][0] = v.x; acc[q][1] = v.y; acc[q][2] = v.z; acc[q][3] = v.w;
                    }
                }
            }
            if (write) tc_store<1, NT>(mm_segment<16>(a.mm, tile), acc, n, g, t);
        }
#pragma unroll
        for (int q = 0; q < T; q++) acc[q][0] = acc[q][1] = acc[q][2] = acc[q][3] = 0.0f;
    }
    if (!TMA) cp_async_wait(0);
}

__global__ void k_widen(float *dst, const void *w, int dt, size_t off, size_t count) {
    pdl_start();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = weight_at(w, dt, off + i);
}

/* rows of dim <= 256: one warp per row, 8 rows per block */
/* One row's RMSNorm by one warp (lane k takes k, k + 32, ...). The separate and the fused
 * kernels below all call this (and rms_row_block, rope_head), so fusing changes no bit. */
__device__ __forceinline__ void rms_row_warp(float *oi, const float *xi, const void *w, int dt, int dim, float eps, int lane) {
    float ss = 0.0f;
    for (int k = lane; k < dim; k += 32) ss = fmaf(xi[k], xi[k], ss);
    ss = warp_sum(ss) / (float)dim;
    const float r = 1.0f / sqrtf(ss + eps);
    for (int k = lane; k < dim; k += 32) oi[k] = weight_at(w, dt, k) * (xi[k] * r);
}

__global__ void k_rmsnorm_warp(float *out, const float *x, const void *w, int dt, int n, int dim, float eps) {
    pdl_start();
    const int lane = threadIdx.x & 31, row = blockIdx.x * 8 + (threadIdx.x >> 5);
    if (row >= n) return;
    rms_row_warp(out + (size_t)row * dim, x + (size_t)row * dim, w, dt, dim, eps, lane);
}

/* 1 / rms of a row from each thread's sum of squares ss: the lanes by warp_sum, the 8 warps in
 * order (every thread of the block must call it) */
__device__ __forceinline__ float rms_block_scale(float ss, int dim, float eps) {
    __shared__ float part[8];
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    float t = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) t += part[j];
    return 1.0f / sqrtf(t / (float)dim + eps);
}

/* larger rows: one block of 256 per row */
__device__ __forceinline__ void rms_row_block(float *oi, const float *xi, const void *w, int dt, int dim, float eps) {
    float ss = 0.0f;
    for (int k = threadIdx.x; k < dim; k += 256) ss = fmaf(xi[k], xi[k], ss);
    const float r = rms_block_scale(ss, dim, eps);
    for (int k = threadIdx.x; k < dim; k += 256) oi[k] = weight_at(w, dt, k) * (xi[k] * r);
}

/* rms_row_block (and add_rms before it: x += y) with the row in registers, for dim <= 256 *
 * RMS_REG: every load of the row, of y and of the weights is issued at once (one memory
 * latency, not one per pass), and the arithmetic is rms_row_block's (and k_add's) exactly.
 * out may be x or y (all of both is read before out is written). */
#define RMS_REG 20 /* hidden sizes up to 5120 */
template <bool ADD>
__device__ __forceinline__ void rms_row_block_reg(float *xi, const float *yi, float *oi, const void *w, int dt, int dim, float eps) {
    float v[RMS_REG], wv[RMS_REG];
#pragma unroll
    for (int r = 0; r < RMS_REG; r++) {
        const int k = threadIdx.x + 256 * r;
        v[r] = k < dim ? xi[k] : 0.0f;
    }
    if (ADD) {
        float yv[RMS_REG];
#pragma unroll
        for (int r = 0; r < RMS_REG; r++) {
            const int k = threadIdx.x + 256 * r;
            yv[r] = k < dim ? yi[k] : 0.0f;
        }
#pragma unroll
        for (int r = 0; r < RMS_REG; r++) {
            const int k = threadIdx.x + 256 * r;
            if (k < dim) xi[k] = v[r] = v[r] + yv[r];
        }
    }
#pragma unroll
    for (int r = 0; r < RMS_REG; r++) {
        const int k = threadIdx.x + 256 * r;
        wv[r] = k < dim ? weight_at(w, dt, k) : 0.0f;
    }
    float ss = 0.0f;
#pragma unroll
    for (int r = 0; r < RMS_REG; r++)
        if (threadIdx.x + 256 * r < dim) ss = fmaf(v[r], v[r], ss);
    const float rs = rms_block_scale(ss, dim, eps);
#pragma unroll
    for (int r = 0; r < RMS_REG; r++) {
        const int k = threadIdx.x + 256 * r;
        if (k < dim) oi[k] = wv[r] * (v[r] * rs);
    }
}

__global__ void __launch_bounds__(256) k_rmsnorm_block(float *out, const float *x, const void *w, int dt, int dim, float eps) {
    pdl_start();
    if (dim <= 256 * RMS_REG)
        rms_row_block_reg<false>((float *)x + (size_t)blockIdx.x * dim, NULL, out + (size_t)blockIdx.x * dim, w, dt, dim, eps);
    else rms_row_block(out + (size_t)blockIdx.x * dim, x + (size_t)blockIdx.x * dim, w, dt, dim, eps);
}

/* fused x += y; out = rmsnorm(x) (out may be y): each thread adds exactly the elements it
 * then normalises, so no other thread's write is awaited; the add is k_add's */
__global__ void k_add_rmsnorm_warp(float *x, const float *y, float *out, const void *w, int dt, int n, int dim, float eps) {
    pdl_start();
    const int lane = threadIdx.x & 31, row = blockIdx.x * 8 + (threadIdx.x >> 5);
    if (row >= n) return;
    float *xi = x + (size_t)row * dim;
    const float *yi = y + (size_t)row * dim;
    for (int k = lane; k < dim; k += 32) xi[k] += yi[k];
    rms_row_warp(out + (size_t)row * dim, xi, w, dt, dim, eps, lane);
}

__global__ void __launch_bounds__(256) k_add_rmsnorm_block(float *x, const float *y, float *out, const void *w, int dt, int dim, float eps) {
    pdl_start();
    float *xi = x + (size_t)blockIdx.x * dim;
    const float *yi = y + (size_t)blockIdx.x * dim;
    if (dim <= 256 * RMS_REG) {
        rms_row_block_reg<true>(xi, yi, out + (size_t)blockIdx.x * dim, w, dt, dim, eps);
        return;
    }
    for (int k = threadIdx.x; k < dim; k += 256) xi[k] += yi[k];
    rms_row_block(out + (size_t)blockIdx.x * dim, xi, w, dt, dim, eps);
}

/* x [n][n_heads][head_dim] rotated in place by pos[i] (rotate-half) */
/* pair j of one head vector v rotated by position p */
__device__ __forceinline__ void rope_pair(float *v, float p, const float *inv_freq, int j, int half) {
    float s, c;
    sincosf(p * inv_freq[j], &s, &c);
    const float a = v[j], b = v[j + half];
    v[j] = a * c - b * s;
    v[j + half] = b * c + a * s;
}

__global__ void k_rope(float *x, const int32_t *pos, const float *inv_freq, int n_heads, int head_dim) {
    pdl_start();
    const int i = blockIdx.x, half = head_dim / 2;
    const float p = (float)pos[i];
    for (int t = threadIdx.x; t < n_heads * half; t += blockDim.x) {
        const int h = t / half, j = t % half;
        rope_pair(x + ((size_t)i * n_heads + h) * head_dim, p, inv_freq, j, half);
    }
}

/* The attention input of one layer in one launch (rmsnorm q and k per head, rope q and k,
 * kv_write): token blockIdx.x, one warp per head (q heads first, then k heads; blockIdx.y
 * picks 8 of them). The k-head warps also write their k head and the matching v head to the
 * cache. Same functions as the separate kernels, so the same bits (head_dim <= 256).
 * R > 0 (head_dim = 32 R, R even): the head in registers, lane l holding elements l + 32 r;
 * a rope pair (j, j + head_dim / 2) then sits in one lane, so every load is issued at once
 * and nothing is read back; the arithmetic is rms_row_warp's and rope_pair's exactly. */
template <int R>
__global__ void __launch_bounds__(256) k_qk_norm_rope_kv(float *q, float *k, const float *v, const void *qw, const void *kw, int dt_q,
                                                         int dt_k, float eps, const int32_t *pos, const float *inv_freq, float *kc,
                                                         float *vc, const int32_t *slot, int layer, int n_slots, int max_ctx,
                                                         int n_heads, int n_kv_heads, int head_dim) {
    pdl_start();
    const int i = blockIdx.x, lane = threadIdx.x & 31, hh = blockIdx.y * 8 + (threadIdx.x >> 5), half = head_dim / 2;
    if (hh >= n_heads + n_kv_heads) return;
    const bool is_q = hh < n_heads;
    const int h = is_q ? hh : hh - n_heads;
    float *hv = is_q ? q + ((size_t)i * n_heads + h) * head_dim : k + ((size_t)i * n_kv_heads + h) * head_dim;
    const void *w = is_q ? qw : kw;
    const int dt = is_q ? dt_q : dt_k, kv_dim = n_kv_heads * head_dim;
    const float *vh = v + (size_t)i * kv_dim + (size_t)h * head_dim;
    if constexpr (R > 0) {
        float x[R], wv[R], vv[R], fr[R / 2];
#pragma unroll
        for (int r = 0; r < R; r++) {
            x[r] = hv[lane + 32 * r];
            wv[r] = weight_at(w, dt, lane + 32 * r);
            vv[r] = is_q ? 0.0f : vh[lane + 32 * r];
        }
#pragma unroll
        for (int r = 0; r < R / 2; r++) fr[r] = inv_freq[lane + 32 * r];
        const float p = (float)pos[i];
        float ss = 0.0f;
#pragma unroll
        for (int r = 0; r < R; r++) ss = fmaf(x[r], x[r], ss);
        ss = warp_sum(ss) / (float)head_dim;
        const float rs = 1.0f / sqrtf(ss + eps);
#pragma unroll
        for (int r = 0; r < R; r++) x[r] = wv[r] * (x[r] * rs);
#pragma unroll
        for (int r = 0; r < R / 2; r++) { /* rope_pair of j = lane + 32 r */
            float sn, cs;
            sincosf(p * fr[r], &sn, &cs);
            const float a = x[r], b = x[r + R / 2];
            x[r] = a * cs - b * sn;
            x[r + R / 2] = b * cs + a * sn;
        }
#pragma unroll
        for (int r = 0; r < R; r++) hv[lane + 32 * r] = x[r];
        if (is_q) return;
        const size_t o = (((size_t)layer * n_slots + slot[i]) * max_ctx + pos[i]) * kv_dim + (size_t)h * head_dim;
#pragma unroll
        for (int r = 0; r < R; r++) {
            kc[o + lane + 32 * r] = x[r];
            vc[o + lane + 32 * r] = vv[r];
        }
        return;
    }
    rms_row_warp(hv, hv, w, dt, head_dim, eps, lane);
    __syncwarp(); /* rope reads pairs written by other lanes */
    const float p = (float)pos[i];
    for (int j = lane; j < half; j += 32) rope_pair(hv, p, inv_freq, j, half);
    if (is_q) return;
    __syncwarp();
    const size_t o = (((size_t)layer * n_slots + slot[i]) * max_ctx + pos[i]) * kv_dim + (size_t)h * head_dim;
    for (int c = lane; c < head_dim; c += 32) {
        kc[o + c] = hv[c];
        vc[o + c] = vh[c];
    }
}

__global__ void k_kv_write(float *kc, float *vc, const float *k, const float *v, const int32_t *slot, const int32_t *pos, int layer,
                           int n_slots, int max_ctx, int kv_dim) {
    pdl_start();
    const int i = blockIdx.x;
    const size_t o = (((size_t)layer * n_slots + slot[i]) * max_ctx + pos[i]) * kv_dim;
    for (int c = threadIdx.x; c < kv_dim; c += blockDim.x) {
        kc[o + c] = k[(size_t)i * kv_dim + c];
        vc[o + c] = v[(size_t)i * kv_dim + c];
    }
}

#define ATT_WARPS 8
#define ATT_SPLITS 16  /* blocks per (token, head): 128 for a decode step of 8 KV heads */
#define ATT_CHUNK 32   /* keys per chunk; block z takes chunks z, z + ATT_SPLITS, ... */

/* the splits that hold keys of a token with len keys (the rest exit at once and are not
 * merged): a property of the token alone, so a row is the same alone or in a batch */
__device__ __forceinline__ int att_splits(int len) {
    const int c = (len + ATT_CHUNK - 1) / ATT_CHUNK;
    return c < ATT_SPLITS ? c : ATT_SPLITS;
}

/* out of (head h, token i): the nz splits' partial results merged in split order (read from
 * L2: the fused path reads what other blocks of its own launch wrote) */
__device__ __forceinline__ void att_merge(float *out, const float *part, int h, int i, int n_heads, int head_dim, int nz, int tid,
                                          int nthreads) {
    const float *p = part + ((size_t)i * n_heads + h) * ATT_SPLITS * (head_dim + 2);
    float M = -INFINITY;
#pragma unroll
    for (int z = 0; z < ATT_SPLITS; z++)
        if (z < nz) M = fmaxf(M, __ldcg(p + z * (head_dim + 2) + head_dim));
    float L = 0.0f, f[ATT_SPLITS];
#pragma unroll
    for (int z = 0; z < ATT_SPLITS; z++) {
        if (z >= nz) break;
        const float mz = __ldcg(p + z * (head_dim + 2) + head_dim);
        f[z] = mz == -INFINITY ? 0.0f : expf(mz - M);
        L += __ldcg(p + z * (head_dim + 2) + head_dim + 1) * f[z];
    }
    const float inv = 1.0f / L;
    float *oi = out + ((size_t)i * n_heads + h) * head_dim;
    for (int d = tid; d < head_dim; d += nthreads) {
        float o = 0.0f;
#pragma unroll
        for (int z = 0; z < ATT_SPLITS; z++)
            if (z < nz) o += __ldcg(p + z * (head_dim + 2) + d) * f[z];
        oi[d] = o * inv;
    }
}

/* Partial attention of (GQ query heads h0.. of one KV head, token i, split z): warp w takes
 * keys w, w + 8, ... of the split's chunks with an online softmax per head (a group of KB keys
 * loaded at once, their scores reduced together); the warps are merged in order into part [hd]
 * sum, [hd] max, [hd + 1] normaliser per head; the last split block of the (token, heads) to
 * finish merges the splits (count; splits past the token's keys exit at once, att_splits).
 * GQ = 1 is the per-head kernel (4x the blocks: it wins at 1 token); GQ = group reads each
 * K/V row once for the KV head's query heads. Per query head the arithmetic does not depend
 * on GQ (the same keys per warp in the same order, the same merges), so the two give the
 * same bits (DSPARK_CUDA_ATT=0/1 force one; test_attention compares them). head_dim <= 32 DPL,
 * GQ * DPL <= 32 for GQ > 1. */
template <int DPL, int GQ>
__global__ void __launch_bounds__(32 * ATT_WARPS) k_attention(float *part, const float *q, const float *kc, const float *vc,
                                                              const int32_t *slot, const int32_t *kv_len, int layer, int n_slots,
                                                              int max_ctx, int kv_dim, int n_heads, int group, int head_dim, float scale,
                                                              float *out, int *count) {
    extern __shared__ float sm[]; /* [ATT_WARPS][GQ][head_dim] acc, [ATT_WARPS][GQ] m, [ATT_WARPS][GQ] l */
    pdl_start();
    const int h0 = blockIdx.x * GQ, i = blockIdx.y, z = blockIdx.z, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int len = kv_len[i], nz = att_splits(len);
    if (z >= nz) return; /* no keys */
    const size_t base = ((size_t)layer * n_slots + slot[i]) * max_ctx * kv_dim + (size_t)(h0 / group) * head_dim;
    float qv[GQ][DPL], acc[GQ][DPL], m[GQ], l[GQ];
#pragma unroll
    for (int g = 0; g < GQ; g++) {
        const float *qi = q + ((size_t)i * n_heads + h0 + g) * head_dim;
#pragma unroll
        for (int t = 0; t < DPL; t++) {
            const int d = lane + 32 * t;
            qv[g][t] = d < head_dim ? qi[d] : 0.0f;
            acc[g][t] = 0.0f;
        }
        m[g] = -INFINITY;
        l[g] = 0.0f;
    }
    constexpr int KB = GQ > 1 ? 4 : DPL <= 4 ? 8 : DPL <= 8 ? 4 : 2; /* keys per warp loaded at once */
    for (int c0 = z * ATT_CHUNK; c0 < len; c0 += ATT_SPLITS * ATT_CHUNK) {
        const int c1 = c0 + ATT_CHUNK < len ? c0 + ATT_CHUNK : len;
        for (int j0 = c0 + warp; j0 < c1; j0 += ATT_WARPS * KB) {
            float kr[KB][DPL], vr[KB][DPL];
#pragma unroll
            for (int u = 0; u < KB; u++) {
                const int j = j0 + ATT_WARPS * u;
                const float *kj = kc + base + (size_t)j * kv_dim, *vj = vc + base + (size_t)j * kv_dim;
#pragma unroll
                for (int t = 0; t < DPL; t++) {
                    const int d = lane + 32 * t;
                    const bool ok = j < c1 && d < head_dim;
                    kr[u][t] = ok ? kj[d] : 0.0f;
                    vr[u][t] = ok ? vj[d] : 0.0f;
                }
            }
            float sc[KB * GQ]; /* the group's scores first (the reductions interleave), then key by key */
#pragma unroll
            for (int u = 0; u < KB; u++)
#pragma unroll
                for (int g = 0; g < GQ; g++) {
                    float s = 0.0f;
#pragma unroll
                    for (int t = 0; t < DPL; t++) {
                        const int d = lane + 32 * t;
                        if (d < head_dim) s = fmaf(qv[g][t], kr[u][t], s);
                    }
                    sc[u * GQ + g] = s;
                }
            warp_sum_n<KB * GQ>(sc);
#pragma unroll
            for (int u = 0; u < KB; u++) {
                if (j0 + ATT_WARPS * u >= c1) break;
#pragma unroll
                for (int g = 0; g < GQ; g++) {
                    const float s = sc[u * GQ + g] * scale;
                    if (s > m[g]) {
                        const float corr = expf(m[g] - s);
                        l[g] *= corr;
#pragma unroll
                        for (int t = 0; t < DPL; t++) acc[g][t] *= corr;
                        m[g] = s;
                    }
                    const float p = expf(s - m[g]);
                    l[g] += p;
#pragma unroll
                    for (int t = 0; t < DPL; t++) {
                        const int d = lane + 32 * t;
                        if (d < head_dim) acc[g][t] = fmaf(p, vr[u][t], acc[g][t]);
                    }
                }
            }
        }
    }
    float *sacc = sm, *sm_m = sm + ATT_WARPS * GQ * head_dim, *sm_l = sm_m + ATT_WARPS * GQ;
#pragma unroll
    for (int g = 0; g < GQ; g++) {
#pragma unroll
        for (int t = 0; t < DPL; t++) {
            const int d = lane + 32 * t;
            if (d < head_dim) sacc[(warp * GQ + g) * head_dim + d] = acc[g][t];
        }
        if (lane == 0) { sm_m[warp * GQ + g] = m[g]; sm_l[warp * GQ + g] = l[g]; }
    }
    __syncthreads();
    /* the merges of the GQ heads side by side: head g on threads [g tph, (g + 1) tph) */
    constexpr int tph = 32 * ATT_WARPS / GQ;
    const int g = threadIdx.x / tph, tl = threadIdx.x % tph;
    {
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, sm_m[w * GQ + g]);
        float L = 0.0f, f[ATT_WARPS];
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) {
            f[w] = sm_m[w * GQ + g] == -INFINITY ? 0.0f : expf(sm_m[w * GQ + g] - M);
            L += sm_l[w * GQ + g] * f[w];
        }
        float *pz = part + (((size_t)i * n_heads + h0 + g) * ATT_SPLITS + z) * (head_dim + 2);
        for (int d = tl; d < head_dim; d += tph) {
            float o = 0.0f;
#pragma unroll
            for (int w = 0; w < ATT_WARPS; w++) o += sacc[(w * GQ + g) * head_dim + d] * f[w];
            pz[d] = o;
        }
        if (tl == 0) { pz[head_dim] = M; pz[head_dim + 1] = L; }
    }
    if (!count) return;
    /* fused merge: one counter per (token, block of heads) (the entry of its first head) */
    __shared__ int last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        int *cnt = count + (size_t)i * n_heads + h0;
        last = atomicAdd(cnt, 1) == nz - 1;
        if (last) *cnt = 0;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    att_merge(out, part, h0 + g, i, n_heads, head_dim, nz, tl, tph);
}

__global__ void k_attention_merge(float *out, const float *part, const int32_t *kv_len, int n_heads, int head_dim) {
    pdl_start();
    att_merge(out, part, blockIdx.x, blockIdx.y, n_heads, head_dim, att_splits(kv_len[blockIdx.y]), threadIdx.x, blockDim.x);
}

__global__ void k_swiglu(float *out, const float *gate, const float *up, size_t n) {
    pdl_start();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) out[i] = silu_mul(gate[i], up[i]);
}

__global__ void k_add(float *x, const float *y, size_t n) {
    pdl_start();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) x[i] += y[i];
}

__global__ void k_gather_rows(float *dst, int dst_stride, const float *src, int src_stride, const int32_t *rows, int cols) {
    pdl_start();
    const int i = blockIdx.x;
    const float *s = src + (size_t)(rows ? rows[i] : i) * src_stride;
    float *d = dst + (size_t)i * dst_stride;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) d[c] = s[c];
}

__global__ void k_bias_act(float *x, const void *bias, int dt, size_t n, int dim, int act) {
    pdl_start();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float v = x[i] + (bias ? weight_at(bias, dt, i % dim) : 0.0f);
        if (act == ACT_SIGMOID) v = 1.0f / (1.0f + expf(-v));
        else if (act == ACT_TANH) v = tanhf(v);
        x[i] = v;
    }
}

__global__ void k_ew(int op, float *out, const float *a, const float *b, const float *c, size_t n) {
    pdl_start();
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        if (op == EW_MUL) out[i] = a[i] * b[i];
        else out[i] = c[i] * a[i] + (1.0f - c[i]) * b[i];
    }
}

/* ---- ops ---- */

/* a kernel's launch, with programmatic stream serialization when pdl (DSPARK_CUDA_PDL): see
 * pdl_wait (an error is LAUNCHED's to report) */
template <typename... KArgs, typename... Args>
static void launch(cudaStream_t st, bool pdl, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, Args... args) {
    cudaLaunchConfig_t lc = {};
    lc.gridDim = grid;
    lc.blockDim = block;
    lc.dynamicSmemBytes = smem;
    lc.stream = st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    lc.attrs = at;
    lc.numAttrs = pdl ? 1 : 0;
    cudaLaunchKernelEx(&lc, kernel, args...);
}
static bool pdl_of(Backend *be) { return impl(be)->mm.pdl; }

static void cu_embed(Backend *be, float *out, const Weight *table, const int32_t *ids, int n) {
    if (n <= 0 || graph_skip(be, 2, out, table->dev, (int)table->dtype, table->cols, ids, n)) return;
    launch(stream_of(be), pdl_of(be), k_embed, n, 256, 0, out, table->dev, (int)table->dtype, ids, table->cols);
    LAUNCHED("embed");
}

template <int NB, int R, int DT, bool VEC>
static void matmul_launch_ref(cudaStream_t st, float *out, const float *x, const void *w, int n, int K, int O) {
    k_matmul_ref<NB, R, DT, VEC><<<(unsigned)((O + R - 1) / R), 256, 0, st>>>(out, x, w, n, K, O);
}

/* the reference: rows in chunks of 32, R (columns per block) growing with the rows */
template <int DT, bool VEC>
static void matmul_small_ref(cudaStream_t st, float *out, const float *x, const void *w, int n, int K, int O) {
    for (int i0 = 0; i0 < n; i0 += 32) {
        const int nb = n - i0 < 32 ? n - i0 : 32;
        float *o = out + (size_t)i0 * O;
        const float *xi = x + (size_t)i0 * K;
        if (nb <= 1) matmul_launch_ref<1, 1, DT, VEC>(st, o, xi, w, nb, K, O);
        else if (nb <= 2) matmul_launch_ref<2, 2, DT, VEC>(st, o, xi, w, nb, K, O);
        else if (nb <= 4) matmul_launch_ref<4, 4, DT, VEC>(st, o, xi, w, nb, K, O);
        else if (nb <= 8) matmul_launch_ref<8, 4, DT, VEC>(st, o, xi, w, nb, K, O);
        else if (nb <= 16) matmul_launch_ref<16, 4, DT, VEC>(st, o, xi, w, nb, K, O);
        else matmul_launch_ref<32, 2, DT, VEC>(st, o, xi, w, nb, K, O);
    }
}


/* matmul_multi's segments, or the one product as a single segment */
static MmMulti mm_segments(const MmMulti *multi, float *out, const void *w, int O) {
    MmMulti mm;
    if (multi) return *multi;
    memset(&mm, 0, sizeof mm);
    mm.count = 1;
    mm.out[0] = out;
    mm.w[0] = w;
    mm.O[0] = O;
    return mm;
}

template <int NB, int C, int DT, bool VEC>
static void matmul_launch(cudaStream_t st, const MmCfg *cfg, float *out, const float *x, const void *w, int n, int K, int O,
                          const MmMulti *multi) {
    MmMulti mm = mm_segments(multi, out, w, O);
    int G = 0;
    for (int j = 0; j < mm.count; j++) mm.g_end[j] = G += (mm.O[j] + C - 1) / C;
    if constexpr (DT != DS_F32 && VEC) {
        if (cfg->persist) {
            static int per_sm = 0; /* resident blocks per SM of this instance, asked once */
            if (!per_sm && (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k_matmul_pf<NB, C, DT>, 256, 0) != cudaSuccess || per_sm < 1)) {
                cudaGetLastError();
                per_sm = 1;
            }
            const int grid = G < per_sm * cfg->nsm ? G : per_sm * cfg->nsm;
            k_matmul_pf<NB, C, DT><<<(unsigned)grid, 256, 0, st>>>(mm, x, n, K);
            return;
        }
    }
    if (multi) k_matmul_multi<NB, C, DT, VEC><<<(unsigned)G, 256, 0, st>>>(mm, x, n, K);
    else k_matmul<NB, C, DT, VEC><<<(unsigned)G, 256, 0, st>>>(out, x, w, n, K, O);
}

/* one launch for any n <= CUDA_SMALL_N: NB rows per chunk (n rounded up to 1, 2, 4, then 8
 * with the block looping over the chunks) and C columns per block (cfg->cols by bucket; the
 * BF16 vector path, the one that decodes, takes 2, 4 or 8, the rest 4) */
template <int NB, int DT, bool VEC>
static void matmul_cols(cudaStream_t st, const MmCfg *cfg, int cols, float *out, const float *x, const void *w, int n, int K, int O,
                        const MmMulti *multi) {
    if (DT == DS_BF16 && VEC && cols == 2) matmul_launch<NB, 2, DT, VEC>(st, cfg, out, x, w, n, K, O, multi);
    else if (DT == DS_BF16 && VEC && cols == 8) matmul_launch<NB, 8, DT, VEC>(st, cfg, out, x, w, n, K, O, multi);
    else matmul_launch<NB, 4, DT, VEC>(st, cfg, out, x, w, n, K, O, multi);
}
template <int DT, bool VEC>
static void matmul_small(cudaStream_t st, const MmCfg *cfg, float *out, const float *x, const void *w, int n, int K, int O,
                         const MmMulti *multi) {
    MmCfg c = *cfg;
    const int b = n <= 1 ? 0 : n <= 2 ? 1 : n <= 4 ? 2 : 3;
    c.persist = cfg->persist_b[b];
    if (n <= 1) matmul_cols<1, DT, VEC>(st, &c, c.cols[0], out, x, w, n, K, O, multi);
    else if (n <= 2) matmul_cols<2, DT, VEC>(st, &c, c.cols[1], out, x, w, n, K, O, multi);
    else if (n <= 4 || cfg->chunk4) matmul_cols<4, DT, VEC>(st, &c, c.cols[b], out, x, w, n, K, O, multi);
    else matmul_cols<8, DT, VEC>(st, &c, c.cols[3], out, x, w, n, K, O, multi);
}

/* the tensor-core product (k_matmul_tc): MT tiles of 16 output rows per block by row bucket
 * (cfg->tc_mt; 1 with fewer than 3 pieces, at most 2 above 32 rows: the block's partial sums
 * must fit in 32 KB of shared memory), NT = rows / 8 rounded up */
template <int MT, int NT, int P>
static void matmul_tc_u(cudaStream_t st, bool pdl, const MmMulti &mm, unsigned grid, const float *x, int n, int K, int deep, int pf) {
    constexpr int U = 4 / (MT > NT ? MT : NT) > 1 ? 4 / (MT > NT ? MT : NT) : 1;
    if constexpr (P == 3) {
        if (deep == 1) {
            launch(st, pdl, k_matmul_tc<MT, NT, P, 2 * U>, grid, 256, 0, mm, x, n, K, pf);
            return;
        }
        if (deep == 2) {
            launch(st, pdl, k_matmul_tc<MT, NT, P, U >= 2 ? U / 2 : 1>, grid, 256, 0, mm, x, n, K, pf);
            return;
        }
    }
    launch(st, pdl, k_matmul_tc<MT, NT, P, U>, grid, 256, 0, mm, x, n, K, pf);
}
template <int MT, int P>
static void matmul_tc_nt(cudaStream_t st, bool pdl, const MmMulti &mm, unsigned grid, const float *x, int n, int K, int deep, int pf) {
    if (n <= 8) matmul_tc_u<MT, 1, P>(st, pdl, mm, grid, x, n, K, deep, pf);
    else if (n <= 16) matmul_tc_u<MT, 2, P>(st, pdl, mm, grid, x, n, K, deep, pf);
    else if (n <= 32) matmul_tc_u<MT, 4, P>(st, pdl, mm, grid, x, n, K, deep, pf);
    else if constexpr (MT <= 2) matmul_tc_u<MT, 8, P>(st, pdl, mm, grid, x, n, K, deep, pf);
}
/* k_matmul_sk's launch (cfg->pdl: with programmatic stream serialization, so its first weight
 * stages load while the kernel before it finishes) */
template <int NT, int KPS, bool XS, bool TMA>
static void sk_launch(cudaStream_t st, const MmCfg *cfg, const SkArgs &a, unsigned grid, size_t smem) {
    launch(st, cfg->pdl, k_matmul_sk<NT, KPS, XS, TMA>, grid, 256, smem, a);
}
template <int KPS, bool TMA>
static void sk_launch_nt(cudaStream_t st, const MmCfg *cfg, const SkArgs &a, unsigned grid, size_t smem) {
    if (a.n <= 8) sk_launch<1, KPS, true, TMA>(st, cfg, a, grid, smem);
    else if (a.n <= 16) sk_launch<2, KPS, false, TMA>(st, cfg, a, grid, smem);
    else if (a.n <= 32) sk_launch<4, KPS, false, TMA>(st, cfg, a, grid, smem);
    else sk_launch<8, KPS, false, TMA>(st, cfg, a, grid, smem);
}
/* every k_matmul_sk instance may use all the shared memory a block can have besides its
 * static part (set once, at create) */
template <int NT, int KPS, bool XS, bool TMA>
static void sk_smem_limit_one(int optin) {
    cudaFuncAttributes fa;
    if (cudaFuncGetAttributes(&fa, k_matmul_sk<NT, KPS, XS, TMA>) == cudaSuccess)
        cudaFuncSetAttribute(k_matmul_sk<NT, KPS, XS, TMA>, cudaFuncAttributeMaxDynamicSharedMemorySize, optin - (int)fa.sharedSizeBytes);
}
template <bool TMA>
static void sk_set_smem_limit_p(int optin) {
    sk_smem_limit_one<1, 1, true, TMA>(optin);
    sk_smem_limit_one<2, 1, false, TMA>(optin);
    sk_smem_limit_one<4, 1, false, TMA>(optin);
    sk_smem_limit_one<8, 1, false, TMA>(optin);
    sk_smem_limit_one<1, 2, true, TMA>(optin);
    sk_smem_limit_one<2, 2, false, TMA>(optin);
    sk_smem_limit_one<4, 2, false, TMA>(optin);
    sk_smem_limit_one<8, 2, false, TMA>(optin);
}
static void sk_set_smem_limit(int optin) {
    sk_set_smem_limit_p<false>(optin);
    sk_set_smem_limit_p<true>(optin);
    cudaGetLastError();
}
/* false: the product does not fit k_matmul_sk's buffers (the caller runs k_matmul_tc) */
static bool matmul_sk(cudaStream_t st, const MmCfg *cfg, float *out, const float *x, const void *w, int n, int K, int O,
                      const MmMulti *multi) {
    SkArgs a;
    memset(&a, 0, sizeof a);
    a.mm = mm_segments(multi, out, w, O);
    int tiles = 0;
    for (int j = 0; j < a.mm.count; j++) a.mm.g_end[j] = tiles += (a.mm.O[j] + 15) / 16;
    const int kst = 8 * cfg->sk_kps, nt = n <= 8 ? 1 : n <= 16 ? 2 : n <= 32 ? 4 : 8;
    a.x = x;
    a.n = n;
    a.K = K;
    a.KS = K / 32;
    a.SPT = (a.KS + kst - 1) / kst;
    a.PPT = (a.KS + SK_PART_KSTEPS - 1) / SK_PART_KSTEPS;
    a.items = tiles * a.PPT;
    if (a.PPT > 1 && ((size_t)a.items * nt * 128 > cfg->sk_scratch_floats || tiles > cfg->sk_count_n)) return false;
    a.ipb = cfg->sk_ipb > 0 ? cfg->sk_ipb : a.items / (4 * cfg->nsm) > 1 ? a.items / (4 * cfg->nsm) : 1;
    a.ring = cfg->sk_ring;
    a.scratch = cfg->sk_scratch;
    a.count = cfg->sk_count;
    const unsigned grid = (unsigned)((a.items + a.ipb - 1) / a.ipb);
    const size_t smem = (size_t)a.ring * ((size_t)16 * (32 * kst + SK_WPAD) * 2 + (nt == 1 ? (size_t)n * (32 * kst + SK_XPAD) * 4 : 0));
    if (smem > (size_t)cfg->sk_smem_max) return false;
    if (cfg->sk_kps == 2) cfg->sk_tma ? sk_launch_nt<2, true>(st, cfg, a, grid, smem) : sk_launch_nt<2, false>(st, cfg, a, grid, smem);
    else cfg->sk_tma ? sk_launch_nt<1, true>(st, cfg, a, grid, smem) : sk_launch_nt<1, false>(st, cfg, a, grid, smem);
    return true;
}

static void matmul_tc(cudaStream_t st, const MmCfg *cfg, float *out, const float *x, const void *w, int n, int K, int O,
                      const MmMulti *multi) {
    if (cfg->sk && cfg->tc == 3 && matmul_sk(st, cfg, out, x, w, n, K, O, multi)) return;
    MmMulti mm = mm_segments(multi, out, w, O);
    const int b = n <= 1 ? 0 : n <= 8 ? 1 : n <= 16 ? 2 : n <= 32 ? 3 : 4;
    int rows = 0;
    for (int j = 0; j < mm.count; j++) rows += mm.O[j];
    /* auto (measured on the H200, docs/bench-cuda.md): 2 tiles per block for lm_head-sized
     * launches up to 32 rows of x (x split once for 32 weight rows), else 1 (more blocks) */
    int mt = cfg->tc_mt[b] ? cfg->tc_mt[b] : rows >= 65536 && n <= 32 ? 2 : 1;
    if (cfg->tc < 3) mt = 1;
    if (n > 32 && mt > 2) mt = 2;
    int G = 0;
    for (int j = 0; j < mm.count; j++) mm.g_end[j] = G += (mm.O[j] + 16 * mt - 1) / (16 * mt);
    if (mm.act) { /* gate/up paired (cu_matmul_multi checked tc == 3): a block per 16 rows of both */
        mt = 2;
        G = (mm.O[0] + 15) / 16;
    }
    const unsigned grid = (unsigned)G;
    /* U: k-steps per round (weights and x in flight at once), 4 / max(MT, NT) (deep 1: twice, 2: half) */
    const int deep = cfg->tc_deep, pf = cfg->tc_pf;
    const bool pdl = cfg->pdl;
    if (cfg->tc == 1) matmul_tc_nt<1, 1>(st, pdl, mm, grid, x, n, K, 0, pf);
    else if (cfg->tc == 2) matmul_tc_nt<1, 2>(st, pdl, mm, grid, x, n, K, 0, pf);
    else if (mt == 1) matmul_tc_nt<1, 3>(st, pdl, mm, grid, x, n, K, deep, pf);
    else if (mt == 2) matmul_tc_nt<2, 3>(st, pdl, mm, grid, x, n, K, deep, pf);
    else matmul_tc_nt<4, 3>(st, pdl, mm, grid, x, n, K, deep, pf);
}
static bool mm_tc(const MmCfg *cfg, int dt, const float *x, const void *w, int K) {
    return cfg->tc && !cfg->ref && dt == DS_BF16 && K % 32 == 0 && ((uintptr_t)x & 15) == 0 && ((uintptr_t)w & 15) == 0;
}

static bool mm_vec(const float *x, const void *w, int K) { return K % 8 == 0 && ((uintptr_t)x & 15) == 0 && ((uintptr_t)w & 15) == 0; }

template <int DT>
static void matmul_small_dt(cudaStream_t st, const MmCfg *cfg, float *out, const float *x, const void *w, int n, int K, int O,
                            const MmMulti *multi) {
    const bool vec = mm_vec(x, w, K);
    if (mm_tc(cfg, DT, x, w, K)) matmul_tc(st, cfg, out, x, w, n, K, O, multi);
    else if (cfg->ref && vec) matmul_small_ref<DT, true>(st, out, x, w, n, K, O);
    else if (cfg->ref) matmul_small_ref<DT, false>(st, out, x, w, n, K, O);
    else if (vec) matmul_small<DT, true>(st, cfg, out, x, w, n, K, O, multi);
    else matmul_small<DT, false>(st, cfg, out, x, w, n, K, O, multi);
}

/* cuBLAS is column-major: W (row-major [O][K]) is K x O with ld K, x is K x n with ld K, and out
 * (row-major [n][O]) is O x n with ld O, so out = op_T(W) * x. BF16/F16 weights are widened to
 * F32 in slices of rows first (cuBLAS has no F32 x BF16 product). */
static void blas_check(cublasStatus_t s, const char *what) {
    if (s == CUBLAS_STATUS_SUCCESS) return;
    fprintf(stderr, "dspark: cuBLAS error %d in %s\n", (int)s, what);
    abort();
}
static void matmul_cublas(Backend *be, float *out, const float *x, const Weight *w, int n) {
    CudaImpl *c = impl(be);
    const int K = w->cols, O = w->rows;
    const float one = 1.0f, zero = 0.0f;
    if (w->dtype == DS_F32) {
        blas_check(c->blas.sgemm(c->blas.h, CUBLAS_OP_T, CUBLAS_OP_N, O, n, K, &one, (const float *)w->dev, K, x, K, &zero, out, O), "sgemm");
        return;
    }
    if (!c->wide) CU(cudaMalloc(&c->wide, sizeof(float) * WIDE_ELEMS));
    int rows_per = (int)(WIDE_ELEMS / (size_t)K);
    if (rows_per < 1) rows_per = 1; /* K > 16M columns cannot happen with the config limits */
    for (int r0 = 0; r0 < O; r0 += rows_per) {
        const int rc = O - r0 < rows_per ? O - r0 : rows_per;
        const size_t count = (size_t)rc * K;
        k_widen<<<blocks_for(count, 256 * 8), 256, 0, c->stream>>>(c->wide, w->dev, w->dtype, (size_t)r0 * K, count);
        LAUNCHED("widen");
        blas_check(c->blas.sgemm(c->blas.h, CUBLAS_OP_T, CUBLAS_OP_N, rc, n, K, &one, c->wide, K, x, K, &zero, out + r0, O), "sgemm");
    }
}

/* a product, launched (no graph logging: cu_matmul and cu_matmul_multi log their own calls) */
static void matmul_run(Backend *be, float *out, const float *x, const Weight *w, int n, const MmMulti *multi) {
    CudaImpl *c = impl(be);
    if (n > CUDA_SMALL_N && c->have_blas) {
        if (c->g_mode == G_CAPTURE) { /* cuBLAS (and its widening buffer) stay out of graphs */
            g_capture_broken = true;
            return;
        }
        DS_ASSERT(!multi);
        matmul_cublas(be, out, x, w, n);
        return;
    }
    switch (w->dtype) {
    case DS_BF16: matmul_small_dt<DS_BF16>(c->stream, &c->mm, out, x, w->dev, n, w->cols, w->rows, multi); break;
    case DS_F16: matmul_small_dt<DS_F16>(c->stream, &c->mm, out, x, w->dev, n, w->cols, w->rows, multi); break;
    default: matmul_small_dt<DS_F32>(c->stream, &c->mm, out, x, w->dev, n, w->cols, w->rows, multi); break;
    }
    LAUNCHED("matmul");
}

static void cu_matmul(Backend *be, float *out, const float *x, const Weight *w, int n) {
    if (n <= 0 || graph_skip(be, 3, out, x, w->dev, (int)w->dtype, w->rows, w->cols, n)) return;
    matmul_run(be, out, x, w, n, NULL);
}

static void swiglu_run(cudaStream_t st, bool pdl, float *out, const float *gate, const float *up, size_t n);

/* backend.h's matmul_multi: one launch when the weights share dtype and vector path (q/k/v,
 * gate/up), else the separate products; act 1: then swiglu into outs[0], as the model would */
static void cu_matmul_multi(Backend *be, float *const *outs, const float *x, const Weight *const *ws, int count, int n, int act) {
    if (n <= 0 || count <= 0) return;
    CudaImpl *c = impl(be);
    if (c->g_mode != G_OFF) {
        const int head[4] = {13, count, n, act};
        glog_bytes(c, head, sizeof head);
        glog_bytes(c, &x, sizeof x);
        for (int j = 0; j < count; j++) {
            const void *p[2] = {outs[j], ws[j]->dev};
            const int d[3] = {(int)ws[j]->dtype, ws[j]->rows, ws[j]->cols};
            glog_bytes(c, p, sizeof p);
            glog_bytes(c, d, sizeof d);
        }
        if (c->g_mode == G_CHECK) return;
    }
    bool fuse = count <= 3 && n <= CUDA_SMALL_N && !c->mm.ref;
    for (int j = 0; j < count && fuse; j++)
        fuse = ws[j]->dtype == ws[0]->dtype && ws[j]->cols == ws[0]->cols && mm_vec(x, ws[j]->dev, ws[j]->cols) == mm_vec(x, ws[0]->dev, ws[0]->cols) &&
               mm_tc(&c->mm, ws[j]->dtype, x, ws[j]->dev, ws[j]->cols) == mm_tc(&c->mm, ws[0]->dtype, x, ws[0]->dev, ws[0]->cols);
    if (fuse) {
        MmMulti mm;
        memset(&mm, 0, sizeof mm);
        mm.count = count;
        for (int j = 0; j < count; j++) {
            mm.out[j] = outs[j];
            mm.w[j] = ws[j]->dev;
            mm.O[j] = ws[j]->rows;
        }
        /* swiglu in k_matmul_tc's store (a launch less per layer; bitwise k_swiglu's values) */
        mm.act = act == 1 && c->fuse && count == 2 && ws[0]->rows == ws[1]->rows && c->mm.tc == 3 && !c->mm.sk &&
                 mm_tc(&c->mm, ws[0]->dtype, x, ws[0]->dev, ws[0]->cols);
        matmul_run(be, outs[0], x, ws[0], n, &mm);
        if (mm.act) return;
    } else {
        for (int j = 0; j < count; j++) matmul_run(be, outs[j], x, ws[j], n, NULL);
    }
    if (act == 1) {
        DS_ASSERT(count == 2 && ws[0]->rows == ws[1]->rows);
        swiglu_run(c->stream, c->mm.pdl, outs[0], outs[0], outs[1], (size_t)n * ws[0]->rows);
    }
}

static void cu_rmsnorm(Backend *be, float *out, const float *x, const Weight *w, int n, int dim, float eps) {
    if (n <= 0 || graph_skip(be, 4, out, x, w->dev, (int)w->dtype, n, dim, eps)) return;
    if (dim <= 256) launch(stream_of(be), pdl_of(be), k_rmsnorm_warp, (n + 7) / 8, 256, 0, out, x, w->dev, (int)w->dtype, n, dim, eps);
    else launch(stream_of(be), pdl_of(be), k_rmsnorm_block, n, 256, 0, out, x, w->dev, (int)w->dtype, dim, eps);
    LAUNCHED("rmsnorm");
}

/* the CPU's float32 inverse frequencies, on the device, one table per (theta, head_dim) */
static const float *rope_freq(Backend *be, float theta, int head_dim) {
    CudaImpl *c = impl(be);
    for (int i = 0; i < N_ROPE_TABLES; i++)
        if (c->rope[i].inv_freq && c->rope[i].theta == theta && c->rope[i].head_dim == head_dim) return c->rope[i].inv_freq;
    if (c->g_mode == G_CAPTURE) return NULL; /* made by the eager bracket before */
    RopeFreq *r = &c->rope[c->rope_next];
    c->rope_next = (c->rope_next + 1) % N_ROPE_TABLES;
    if (r->inv_freq) {
        graphs_new_epoch(c);
        CU(cudaFree(r->inv_freq));
    }
    float host[256];
    const int half = head_dim / 2;
    DS_ASSERT(half <= 256);
    /* transformers: inv_freq = 1 / theta^(arange(0, hd, 2) / hd), in float32 (backend_cpu.c) */
    for (int j = 0; j < half; j++) host[j] = 1.0f / powf(theta, (float)(2 * j) / (float)head_dim);
    CU(cudaMalloc(&r->inv_freq, sizeof(float) * half));
    CU(cudaMemcpyAsync(r->inv_freq, host, sizeof(float) * half, cudaMemcpyHostToDevice, c->stream));
    r->theta = theta;
    r->head_dim = head_dim;
    return r->inv_freq;
}

static void cu_rope(Backend *be, float *x, const int32_t *pos, int n, int n_heads, int head_dim, float theta) {
    if (n <= 0 || graph_skip(be, 5, x, pos, n, n_heads, head_dim, theta)) return;
    const float *f = rope_freq(be, theta, head_dim);
    if (!f) {
        g_capture_broken = true;
        return;
    }
    int threads = n_heads * (head_dim / 2);
    threads = threads < 32 ? 32 : threads > 256 ? 256 : threads;
    launch(stream_of(be), pdl_of(be), k_rope, n, threads, 0, x, pos, f, n_heads, head_dim);
    LAUNCHED("rope");
}

static void cu_kv_write(Backend *be, KvCache *kv, int layer, const float *k, const float *v, const int32_t *slot, const int32_t *pos,
                        int n) {
    if (n <= 0 || graph_skip(be, 6, kv->k, kv->v, kv->n_slots, kv->max_ctx, kv->kv_dim, layer, k, v, slot, pos, n)) return;
    launch(stream_of(be), pdl_of(be), k_kv_write, n, 256, 0, kv->k, kv->v, k, v, slot, pos, layer, kv->n_slots, kv->max_ctx, kv->kv_dim);
    LAUNCHED("kv_write");
}

static void cu_qk_norm_rope_kv(Backend *be, float *q, float *k, const float *v, const Weight *q_norm, const Weight *k_norm, float eps,
                               KvCache *kv, int layer, const int32_t *slot, const int32_t *pos, int n, int n_heads, int n_kv_heads,
                               int head_dim, float theta) {
    if (head_dim > 256 || head_dim % 2) { /* k_rmsnorm_block's arithmetic: keep the separate ops */
        cu_rmsnorm(be, q, q, q_norm, n * n_heads, head_dim, eps);
        cu_rmsnorm(be, k, k, k_norm, n * n_kv_heads, head_dim, eps);
        cu_rope(be, q, pos, n, n_heads, head_dim, theta);
        cu_rope(be, k, pos, n, n_kv_heads, head_dim, theta);
        cu_kv_write(be, kv, layer, k, v, slot, pos, n);
        return;
    }
    if (n <= 0 || graph_skip(be, 13, q, k, v, q_norm->dev, (int)q_norm->dtype, k_norm->dev, (int)k_norm->dtype, eps, kv->k, kv->v,
                             kv->n_slots, kv->max_ctx, layer, slot, pos, n, n_heads, n_kv_heads, head_dim, theta))
        return;
    const float *f = rope_freq(be, theta, head_dim);
    if (!f) {
        g_capture_broken = true;
        return;
    }
    dim3 grid((unsigned)n, (unsigned)((n_heads + n_kv_heads + 7) / 8));
    void (*kern)(float *, float *, const float *, const void *, const void *, int, int, float, const int32_t *, const float *, float *,
                 float *, const int32_t *, int, int, int, int, int, int) = head_dim == 64    ? k_qk_norm_rope_kv<2>
                                                                           : head_dim == 128 ? k_qk_norm_rope_kv<4>
                                                                           : head_dim == 256 ? k_qk_norm_rope_kv<8>
                                                                                             : k_qk_norm_rope_kv<0>;
    launch(stream_of(be), pdl_of(be), kern, grid, 256, 0, q, k, v, q_norm->dev, k_norm->dev, (int)q_norm->dtype, (int)k_norm->dtype, eps,
           pos, f, kv->k, kv->v, slot, layer, kv->n_slots, kv->max_ctx, n_heads, n_kv_heads, head_dim);
    LAUNCHED("qk_norm_rope_kv");
}

static void cu_add_rmsnorm(Backend *be, float *x, const float *y, float *out, const Weight *w, int n, int dim, float eps) {
    if (n <= 0 || graph_skip(be, 14, x, y, out, w->dev, (int)w->dtype, n, dim, eps)) return;
    if (dim <= 256) launch(stream_of(be), pdl_of(be), k_add_rmsnorm_warp, (n + 7) / 8, 256, 0, x, y, out, w->dev, (int)w->dtype, n, dim, eps);
    else launch(stream_of(be), pdl_of(be), k_add_rmsnorm_block, n, 256, 0, x, y, out, w->dev, (int)w->dtype, dim, eps);
    LAUNCHED("add_rmsnorm");
}

void backend_cuda_set_fused(Backend *be, bool on) {
    impl(be)->fuse = on;
    be->qk_norm_rope_kv = on ? cu_qk_norm_rope_kv : NULL;
    be->add_rmsnorm = on ? cu_add_rmsnorm : NULL;
}

/* k_attention's instances: GQ > 1 only where GQ * DPL <= 32 (the caller checks) */
template <int DPL, int GQ>
static void att_launch(cudaStream_t st, bool pdl, dim3 grid, size_t smem, float *part, const float *q, const KvCache *kv, const int32_t *slot,
                       const int32_t *kv_len, int layer, int n_heads, int group, int head_dim, float scale, float *out, int *count) {
    if constexpr (GQ == 1 || DPL * GQ <= 32)
        launch(st, pdl, k_attention<DPL, GQ>, grid, 32 * ATT_WARPS, smem, part, q, (const float *)kv->k, (const float *)kv->v, slot, kv_len,
               layer, kv->n_slots, kv->max_ctx, kv->kv_dim, n_heads, group, head_dim, scale, out, count);
}

static void cu_attention(Backend *be, float *out, const float *q, const KvCache *kv, int layer, const int32_t *slot,
                         const int32_t *kv_len, int n, int n_heads, int n_kv_heads, int head_dim) {
    if (n <= 0 || graph_skip(be, 7, out, q, kv->k, kv->v, kv->n_slots, kv->max_ctx, kv->kv_dim, layer, slot, kv_len, n, n_heads, n_kv_heads,
                             head_dim, impl(be)->fuse))
        return;
    DS_ASSERT(head_dim <= 512 && n_heads % n_kv_heads == 0);
    CudaImpl *c = impl(be);
    const size_t need = (size_t)n * n_heads * ATT_SPLITS * (head_dim + 2);
    if (need > c->att_cap) { /* grows to the largest call once (cudaFree waits for its users) */
        if (c->g_mode == G_CAPTURE) {
            g_capture_broken = true;
            return;
        }
        if (c->att_part) {
            graphs_new_epoch(c);
            CU(cudaFree(c->att_part));
        }
        c->att_part = NULL;
        CU(cudaMalloc(&c->att_part, sizeof(float) * need));
        c->att_cap = need;
        if (c->att_count) CU(cudaFree(c->att_count));
        const size_t nc = need / ((size_t)ATT_SPLITS * (head_dim + 2)) + 1; /* >= n * n_heads of any call that fits att_part */
        CU(cudaMalloc(&c->att_count, sizeof(int) * nc));
        CU(cudaMemsetAsync(c->att_count, 0, sizeof(int) * nc, c->stream));
        c->att_count_n = nc;
    }
    /* the fused merge needs a counter per (token, head) */
    int *count = c->fuse && (size_t)n * n_heads <= c->att_count_n ? c->att_count : NULL;
    const float scale = 1.0f / sqrtf((float)head_dim);
    const int group = n_heads / n_kv_heads;
    const int dpl = head_dim <= 32 ? 1 : head_dim <= 64 ? 2 : head_dim <= 128 ? 4 : head_dim <= 256 ? 8 : 16;
    /* a KV head's query heads per block from att_gqa_min tokens on (at 1 token the per-head
     * blocks, 4x as many, win: docs/bench-cuda.md) */
    const int gq = n >= c->att_gqa_min && (group == 2 || group == 4 || group == 8) && group * dpl <= 32 ? group : 1;
    const dim3 grid((unsigned)(n_heads / gq), (unsigned)n, ATT_SPLITS);
    const size_t smem = sizeof(float) * ATT_WARPS * (size_t)gq * ((size_t)head_dim + 2);
    cudaStream_t st = c->stream;
    float *part = c->att_part;
#define ATT(D, G) att_launch<D, G>(st, c->mm.pdl, grid, smem, part, q, kv, slot, kv_len, layer, n_heads, group, head_dim, scale, out, count)
#define ATT_D(G) \
    do { \
        if (dpl == 1) ATT(1, G); \
        else if (dpl == 2) ATT(2, G); \
        else if (dpl == 4) ATT(4, G); \
        else if (dpl == 8) ATT(8, G); \
        else ATT(16, G); \
    } while (0)
    if (gq == 1) ATT_D(1);
    else if (gq == 2) ATT_D(2);
    else if (gq == 4) ATT_D(4);
    else ATT_D(8);
#undef ATT_D
#undef ATT
    LAUNCHED("attention");
    if (!count) {
        launch(st, c->mm.pdl, k_attention_merge, dim3((unsigned)n_heads, (unsigned)n), 128, 0, out, (const float *)part, kv_len, n_heads,
               head_dim);
        LAUNCHED("attention merge");
    }
}

static void swiglu_run(cudaStream_t st, bool pdl, float *out, const float *gate, const float *up, size_t n) {
    if (!n) return;
    launch(st, pdl, k_swiglu, blocks_for(n, 256 * 4), 256, 0, out, gate, up, n);
    LAUNCHED("swiglu");
}
static void cu_swiglu(Backend *be, float *out, const float *gate, const float *up, size_t n) {
    if (!n || graph_skip(be, 8, out, gate, up, n)) return;
    swiglu_run(stream_of(be), pdl_of(be), out, gate, up, n);
}

static void cu_add(Backend *be, float *x, const float *y, size_t n) {
    if (!n || graph_skip(be, 9, x, y, n)) return;
    launch(stream_of(be), pdl_of(be), k_add, blocks_for(n, 256 * 4), 256, 0, x, y, n);
    LAUNCHED("add");
}

static void cu_gather_rows(Backend *be, float *dst, int dst_stride, const float *src, int src_stride, const int32_t *rows, int n,
                           int cols) {
    if (n <= 0 || cols <= 0 || graph_skip(be, 10, dst, dst_stride, src, src_stride, rows, n, cols)) return;
    launch(stream_of(be), pdl_of(be), k_gather_rows, n, 256, 0, dst, dst_stride, src, src_stride, rows, cols);
    LAUNCHED("gather_rows");
}

static void cu_bias_act(Backend *be, float *x, const Weight *bias, int n, int dim, int act) {
    const size_t total = (size_t)n * dim;
    if (!total || graph_skip(be, 11, x, bias ? bias->dev : NULL, bias ? (int)bias->dtype : -1, n, dim, act)) return;
    launch(stream_of(be), pdl_of(be), k_bias_act, blocks_for(total, 256 * 4), 256, 0, x, bias ? (const void *)bias->dev : NULL,
           bias ? (int)bias->dtype : (int)DS_F32, total, dim, act);
    LAUNCHED("bias_act");
}

static void cu_ew(Backend *be, int op, float *out, const float *a, const float *b, const float *c, size_t n) {
    if (!n || graph_skip(be, 12, op, out, a, b, c, n)) return;
    launch(stream_of(be), pdl_of(be), k_ew, blocks_for(n, 256 * 4), 256, 0, op, out, a, b, c, n);
    LAUNCHED("ew");
}

static GraphRec *graph_find(CudaImpl *c, bool exact) {
    for (int i = 0; i < N_GRAPHS; i++) {
        GraphRec *r = &c->rec[i];
        if (r->exec && r->key == c->g_key && r->epoch == c->epoch &&
            (!exact || (r->len == c->g_len && memcmp(r->log, c->g_log, c->g_len) == 0)))
            return r;
    }
    return NULL;
}

/* seen[] index of a key that may be recorded: token counts 1..CUDA_SMALL_N, the drafter's
 * keys (backend.h) after them; -1: always eager (larger counts go through cuBLAS) */
static int graph_key_index(int key) {
    if (key >= 1 && key <= CUDA_SMALL_N) return key;
    if (key >= GRAPH_KEY_DRAFT && key - GRAPH_KEY_DRAFT < GRAPH_KEYS_DRAFT) return CUDA_SMALL_N + 1 + (key - GRAPH_KEY_DRAFT);
    return -1;
}

static void cu_graph_begin(Backend *be, int key) {
    CudaImpl *c = impl(be);
    DS_ASSERT(c->g_mode == G_OFF);
    c->g_len = 0;
    c->g_key = key;
    g_capture_broken = false;
    const int ki = graph_key_index(key);
    int mode;
    if (ki < 0) mode = G_EAGER;
    else if (c->g_next) mode = c->g_next;
    else if (graph_find(c, false)) mode = G_CHECK;
    else if (c->seen[ki]) mode = G_CAPTURE;
    else {
        c->seen[ki] = true;
        mode = G_EAGER;
    }
    c->g_next = G_OFF;
    if (mode == G_CAPTURE) {
        if (cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess) g_capturing = true;
        else {
            cudaGetLastError();
            mode = G_EAGER;
        }
    }
    c->g_mode = mode;
}

/* the record slot for a new graph: a free one, else the least recently used (the stream is
 * drained first: its exec may still be running) */
static GraphRec *graph_slot(CudaImpl *c) {
    GraphRec *lru = &c->rec[0];
    for (int i = 0; i < N_GRAPHS; i++) {
        if (!c->rec[i].exec) return &c->rec[i];
        if (c->rec[i].used < lru->used) lru = &c->rec[i];
    }
    CU(cudaStreamSynchronize(c->stream));
    CU(cudaGraphExecDestroy(lru->exec));
    ds_free(lru->log);
    memset(lru, 0, sizeof *lru);
    return lru;
}

static bool cu_graph_end(Backend *be) {
    CudaImpl *c = impl(be);
    const int mode = c->g_mode;
    c->g_mode = G_OFF;
    if (mode == G_EAGER) return true;
    if (mode == G_CHECK) {
        GraphRec *r = graph_find(c, true);
        if (!r) {
            c->g_misses++;
            c->g_next = G_CAPTURE;
            return false;
        }
        r->used = ++c->g_clock;
        CU(cudaGraphLaunch(r->exec, c->stream));
        c->g_replays++;
        return true;
    }
    g_capturing = false;
    cudaGraph_t g = NULL;
    cudaGraphExec_t ex = NULL;
    cudaError_t e = cudaStreamEndCapture(c->stream, &g);
    if (e == cudaSuccess && g && !g_capture_broken) e = cudaGraphInstantiate(&ex, g, 0);
    if (g) cudaGraphDestroy(g);
    if (e != cudaSuccess || !ex) { /* nothing ran: the ops again, eagerly */
        cudaGetLastError();
        if (ex) cudaGraphExecDestroy(ex);
        c->g_next = G_EAGER;
        return false;
    }
    GraphRec *r = graph_slot(c);
    r->log = (unsigned char *)ds_malloc(c->g_len ? c->g_len : 1);
    DS_ASSERT(r->log);
    memcpy(r->log, c->g_log, c->g_len);
    r->len = c->g_len;
    r->key = c->g_key;
    r->epoch = c->epoch;
    r->exec = ex;
    r->used = ++c->g_clock;
    CU(cudaGraphLaunch(ex, c->stream));
    c->g_captures++;
    return true;
}

extern "C" void backend_cuda_graph_stats(const Backend *be, long *captures, long *replays, long *misses) {
    const CudaImpl *c = (const CudaImpl *)be->impl;
    *captures = c->g_captures;
    *replays = c->g_replays;
    *misses = c->g_misses;
}

static void cu_destroy(Backend *be) {
    CudaImpl *c = impl(be);
    if (c) {
        cudaStreamSynchronize(c->stream);
        for (int i = 0; i < N_GRAPHS; i++)
            if (c->rec[i].exec) {
                cudaGraphExecDestroy(c->rec[i].exec);
                ds_free(c->rec[i].log);
            }
        ds_free(c->g_log);
        for (int i = 0; i < N_ROPE_TABLES; i++) if (c->rope[i].inv_freq) cudaFree(c->rope[i].inv_freq);
        if (c->wide) cudaFree(c->wide);
        if (c->att_part) cudaFree(c->att_part);
        if (c->att_count) cudaFree(c->att_count);
        if (c->mm.sk_scratch) cudaFree(c->mm.sk_scratch);
        if (c->mm.sk_count) cudaFree(c->mm.sk_count);
        if (c->have_blas) {
            c->blas.destroy(c->blas.h);
            dlclose(c->blas.lib);
        }
        cudaStreamDestroy(c->stream);
        ds_free(c);
    }
    ds_free(be);
}

extern "C" const char *backend_cuda_info(const Backend *be) { return ((const CudaImpl *)be->impl)->info; }
extern "C" void *backend_cuda_stream(const Backend *be) { return (void *)((const CudaImpl *)be->impl)->stream; }

/* DSPARK_CUDA_MM_TC: 0 the F32-FMA kernel for BF16 weights too (before/after), 1 or 2 bf16
 * pieces of x (lossy: tests and measurements), default 3; DSPARK_CUDA_TC_MT: "M" or
 * "M1,M8,M16,M32,M64", 16-row tiles per block (1, 2 or 4) by row bucket; DSPARK_CUDA_TC_DEEP=1
 * or 2: twice or half the k-steps per round; DSPARK_CUDA_TC_PREFETCH=KB: L2 prefetch of each
 * weight row at block start, up to KB (default 0, off). None of these changes a value. */
static void mm_tc_config(MmCfg *m) {
    const char *tc = getenv("DSPARK_CUDA_MM_TC"), *mt = getenv("DSPARK_CUDA_TC_MT"), *deep = getenv("DSPARK_CUDA_TC_DEEP");
    m->tc_deep = deep && (deep[0] == '1' || deep[0] == '2') && !deep[1] ? deep[0] - '0' : 0;
    const char *pf = getenv("DSPARK_CUDA_TC_PREFETCH");
    const int pf_kb = pf ? atoi(pf) : -1;
    /* off by default: it helped single products that L2 could not hold, but cost 0.6 ms per
     * decode step of the 36-layer model (docs/bench-cuda.md) */
    m->tc_pf = pf_kb <= 0 ? 0 : pf_kb > 1 << 20 ? 1 << 30 : pf_kb * 1024;
    m->tc = m->ref ? 0 : 3;
    if (tc && tc[0] >= '0' && tc[0] <= '3' && !tc[1]) m->tc = m->ref ? 0 : tc[0] - '0';
    const int mt_default[5] = {0, 0, 0, 0, 0}; /* auto (matmul_tc) */
    for (int i = 0; i < 5; i++) m->tc_mt[i] = mt_default[i];
    if (mt) {
        int v[5], k = sscanf(mt, "%d,%d,%d,%d,%d", &v[0], &v[1], &v[2], &v[3], &v[4]);
        for (int i = 0; i < 5 && k >= 1; i++) {
            const int x = v[k == 5 ? i : 0];
            if (x == 1 || x == 2 || x == 4) m->tc_mt[i] = x;
        }
    }
}

/* DSPARK_CUDA_MM_SK (off by default): "R[,KPS[,IPB[,TMA]]]" selects k_matmul_sk: ring stages
 * (3..8, default 6), k-steps per warp and stage (1 or 2: 2 cuts K into other stages, which
 * changes values within rounding, never across row counts), items per block (0 auto) and
 * the producer (0 cp.async, 1 bulk copies);
 * DSPARK_CUDA_PDL=0: kernels launched in plain stream order (default: with programmatic
 * stream serialization, pdl_wait). The buffers:
 * part sums for 2M floats (8 MB) and counters for 65536 tiles. false: out of GPU memory. */
static bool mm_sk_config(MmCfg *m, const cudaDeviceProp *prop) {
    const char *sk = getenv("DSPARK_CUDA_MM_SK"), *pdl = getenv("DSPARK_CUDA_PDL");
    /* opt-in: on the H200 it reached only 0.2-0.37 of the copy bandwidth where k_matmul_tc
     * reaches 0.43-0.97 (docs/bench-cuda.md), though its values are exact and tested */
    m->sk = sk && strcmp(sk, "0") != 0 && !m->ref;
    m->sk_ring = 6;
    m->sk_kps = 1;
    m->sk_ipb = 0;
    m->sk_tma = false;
    if (sk && m->sk) {
        int v[4] = {6, 1, 0, 0};
        sscanf(sk, "%d,%d,%d,%d", &v[0], &v[1], &v[2], &v[3]);
        if (v[0] >= 3 && v[0] <= SK_MAX_RING) m->sk_ring = v[0];
        if (v[1] == 1 || v[1] == 2) m->sk_kps = v[1];
        if (v[2] >= 0) m->sk_ipb = v[2];
        m->sk_tma = v[3] == 1;
    }
    m->sk_smem_max = (int)prop->sharedMemPerBlockOptin - 20 * 1024; /* room for the largest static part */
    /* on by default (H200: 4.17 -> 4.09 ms per decode step, 5.34 -> 5.24 at 8 tokens) */
    m->pdl = !(pdl && strcmp(pdl, "0") == 0);
    m->sk_scratch_floats = (size_t)2 << 20;
    m->sk_count_n = 65536;
    if (cudaMalloc(&m->sk_scratch, sizeof(float) * m->sk_scratch_floats) != cudaSuccess ||
        cudaMalloc(&m->sk_count, sizeof(int) * (size_t)m->sk_count_n) != cudaSuccess ||
        cudaMemset(m->sk_count, 0, sizeof(int) * (size_t)m->sk_count_n) != cudaSuccess) {
        cudaGetLastError();
        if (m->sk_scratch) cudaFree(m->sk_scratch);
        if (m->sk_count) cudaFree(m->sk_count);
        return false;
    }
    sk_set_smem_limit((int)prop->sharedMemPerBlockOptin);
    return true;
}

extern "C" Backend *backend_cuda_create(int n_threads, char *err) {
    (void)n_threads;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count < 1) {
        const char *why = e == cudaErrorInsufficientDriver ? "no NVIDIA driver, or one older than this build's CUDA runtime"
                          : e != cudaSuccess              ? cudaGetErrorString(e)
                                                          : "no device found";
        ds_err(err, DS_EDEVICE, "--device cuda: no usable NVIDIA GPU (%s)", why);
        return NULL;
    }
    cudaDeviceProp prop;
    if ((e = cudaSetDevice(0)) != cudaSuccess || (e = cudaGetDeviceProperties(&prop, 0)) != cudaSuccess) {
        ds_err(err, DS_EDEVICE, "--device cuda: cannot open GPU 0 (%s)", cudaGetErrorString(e));
        return NULL;
    }
    /* the kernels exist only for the architectures this binary was built for */
    cudaFuncAttributes fa;
    if ((e = cudaFuncGetAttributes(&fa, k_add)) != cudaSuccess) {
        cudaGetLastError();
        ds_err(err, DS_EDEVICE, "--device cuda: %s (sm_%d%d) cannot run this build's kernels (%s); rebuild with -DCMAKE_CUDA_ARCHITECTURES=%d%d",
               prop.name, prop.major, prop.minor, cudaGetErrorString(e), prop.major, prop.minor);
        return NULL;
    }
    Backend *be = (Backend *)ds_calloc(1, sizeof *be);
    CudaImpl *c = (CudaImpl *)ds_calloc(1, sizeof *c);
    if (!be || !c) {
        ds_free(be);
        ds_free(c);
        ds_err(err, DS_ENOMEM, "out of memory creating the CUDA backend");
        return NULL;
    }
    if ((e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        ds_free(be);
        ds_free(c);
        ds_err(err, DS_EDEVICE, "--device cuda: cannot create a stream (%s)", cudaGetErrorString(e));
        return NULL;
    }
    c->have_blas = cublas_open(&c->blas, c->stream);
    const char *ref = getenv("DSPARK_CUDA_MATMUL_REF"), *cols = getenv("DSPARK_CUDA_MM_COLS"), *pers = getenv("DSPARK_CUDA_MM_PERSIST");
    c->mm.ref = ref && strcmp(ref, "1") == 0;
    /* measured on the H200 (docs/bench-cuda.md): persistent blocks for one row, 4 columns
     * per block except 8 for two rows */
    const bool pers_default[4] = {true, false, false, false};
    for (int i = 0; i < 4; i++) c->mm.persist_b[i] = pers_default[i];
    if (pers) { /* "P" for every bucket or "P1,P2,P4,P8" (0 or 1) */
        int v[4], k = sscanf(pers, "%d,%d,%d,%d", &v[0], &v[1], &v[2], &v[3]);
        for (int i = 0; i < 4 && k >= 1; i++) c->mm.persist_b[i] = v[k == 4 ? i : 0] == 1;
    }
    const char *chunk = getenv("DSPARK_CUDA_MM_CHUNK"), *multi = getenv("DSPARK_CUDA_MM_MULTI");
    c->mm.chunk4 = chunk && strcmp(chunk, "4") == 0;
    c->mm.multi = !(multi && strcmp(multi, "0") == 0) && !c->mm.ref;
    c->mm.nsm = prop.multiProcessorCount;
    mm_tc_config(&c->mm);
    if (!mm_sk_config(&c->mm, &prop)) {
        cudaStreamDestroy(c->stream);
        if (c->have_blas) {
            c->blas.destroy(c->blas.h);
            dlclose(c->blas.lib);
        }
        ds_free(be);
        ds_free(c);
        ds_err(err, DS_ENOMEM, "--device cuda: out of GPU memory for the product's buffers");
        return NULL;
    }
    const int cols_default[4] = {4, 8, 4, 4};
    for (int i = 0; i < 4; i++) c->mm.cols[i] = cols_default[i];
    if (cols) { /* "C" for every bucket or "C1,C2,C4,C8" (2, 4 or 8; benchmarks tune with it) */
        int v[4], k = sscanf(cols, "%d,%d,%d,%d", &v[0], &v[1], &v[2], &v[3]);
        for (int i = 0; i < 4 && k >= 1; i++) {
            const int x = v[k == 4 ? i : 0];
            if (x == 2 || x == 4 || x == 8) c->mm.cols[i] = x;
        }
    }
    const char *sync = getenv("DSPARK_CUDA_SYNC");
    g_sync_each = sync && strcmp(sync, "1") == 0;
    snprintf(c->info, sizeof c->info, "%.200s (sm_%d%d, %.1f GB, %d SMs), products: own kernel%s", prop.name, prop.major, prop.minor,
             prop.totalGlobalMem / 1e9, prop.multiProcessorCount, c->have_blas ? " <= 64 rows, cuBLAS F32 above" : " (no cuBLAS)");
    if (c->mm.ref) strncat(c->info, ", reference product kernel", sizeof c->info - strlen(c->info) - 1);
    else if (c->mm.tc) {
        char t[160];
        snprintf(t, sizeof t, ", BF16 <= 64 rows: tensor cores, x in %d bf16 piece%s%s", c->mm.tc, c->mm.tc > 1 ? "s" : "",
                 c->mm.sk && c->mm.tc == 3 ? ", streamed (cp.async ring)" : "");
        strncat(c->info, t, sizeof c->info - strlen(c->info) - 1);
    }
    if (c->mm.pdl) strncat(c->info, ", programmatic dependent launch", sizeof c->info - strlen(c->info) - 1);
    be->impl = c;
    be->name = "cuda";
    be->host_memory = false;
    be->n_threads = 1;
    be->alloc = cu_alloc;
    be->free = cu_free;
    be->to_device = cu_to_device;
    be->to_host = cu_to_host;
    be->copy = cu_copy;
    be->upload_weight = cu_upload_weight;
    be->release_weight = cu_release_weight;
    be->synchronize = cu_sync;
    be->embed = cu_embed;
    be->matmul = cu_matmul;
    be->matmul_multi = c->mm.multi ? cu_matmul_multi : NULL;
    be->rmsnorm = cu_rmsnorm;
    be->rope = cu_rope;
    be->kv_write = cu_kv_write;
    /* on by default (H200: 4.54 -> 4.23 ms per decode step, docs/bench-cuda.md);
     * DSPARK_CUDA_FUSE=0 issues the separate ops (test_fused_ops compares the two bitwise) */
    const char *fuse = getenv("DSPARK_CUDA_FUSE");
    backend_cuda_set_fused(be, !(fuse && strcmp(fuse, "0") == 0));
    be->attention = cu_attention;
    /* DSPARK_CUDA_ATT: 0 one query head per block always, 1 a KV head's query heads wherever
     * that applies, else auto */
    const char *att = getenv("DSPARK_CUDA_ATT");
    c->att_gqa_min = att && !strcmp(att, "0") ? INT_MAX : att && !strcmp(att, "1") ? 1 : 2;
    be->swiglu = cu_swiglu;
    be->add = cu_add;
    be->gather_rows = cu_gather_rows;
    be->bias_act = cu_bias_act;
    be->ew = cu_ew;
    /* DSPARK_CUDA_GRAPHS=0: no step graphs (nor with DSPARK_CUDA_SYNC=1, which waits inside them) */
    const char *graphs = getenv("DSPARK_CUDA_GRAPHS");
    if (!(graphs && strcmp(graphs, "0") == 0) && !g_sync_each) {
        be->graph_begin = cu_graph_begin;
        be->graph_end = cu_graph_end;
    }
    be->destroy = cu_destroy;
    cuda_sample_install(be); /* sample_probs, draw, verify (sample_cuda.cu) */
    return be;
}
