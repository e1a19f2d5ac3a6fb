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
 *   attention  per (token, head) up to 16 blocks, block z taking the chunks z, z + 16, ...
 *              (128 keys each up to 1024 keys, else 256: att_chunk_of) and its warp w the
 *              keys w, w + 8, ... of them, online softmax; warps then blocks merged in order.
 *              The split depends on the token's key count only, never on n.
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
    bool pdl;      /* kernels launched with programmatic stream serialization (DSPARK_CUDA_PDL=0: off) */
    bool col;      /* plain BF16 products on k_matmul_col (DSPARK_CUDA_COL=0: k_matmul_tc) */
    bool np;       /* matmul_norm on k_matmul_col from norm pieces (DSPARK_CUDA_NORM_PIECES=0: k_matmul_tc's NORM) */
    bool np_act;   /* and the paired gate/up + swiglu store too (one stream, or DSPARK_CUDA_NORM_PIECES=1; =2 off) */
    int col_mt[5], col_u[4]; /* its 16-row tiles per block and k-steps per round by row bucket 1-2, 3-5, 6-8, 9-64 (DSPARK_CUDA_COL_MT, _U);
                              * col_mt[4]: 1-2 rows of a wide product (>= 4096 weight rows) with its pieces from memory */
    int col_chunk[5];        /* its rows of x per block by the same buckets of min(n, 16), and [4]: 6-8 rows of a narrow
                              * product (< 4096 weight rows in all) (DSPARK_CUDA_COL_CHUNK; 2..16) */
    uint4 *xp_buf[2]; /* x's pieces for k_matmul_col: what an op made (CudaImpl's xp_p) or k_split_x writes; two,
                       * so that a product reading one can store its output's in the other */
    size_t xp_cap;    /* 16-bit elements in each */
    float *ss_buf[2]; /* the tile squares of norm pieces in xp_buf[b] (matmul_tc.cuh): CUDA_SMALL_N rows of K / 16 */
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
    bool fold;         /* matmul_norm and matmul_add (the rmsnorm and the residual add in the products) */
    bool tiles;        /* BF16 matrices in tiles (cuda_common.cuh's tile_at; DSPARK_CUDA_TILES=0: row-major) */
    float *norm_r;     /* [CUDA_SMALL_N]: k_norm_prep's 1 / rms per row */
    void *draw_scratch; /* [DRAW_SCRATCH bytes]: sample_cuda.cu's draw (its chunks' sums) */
    /* the pieces at xp_p (one of mm.xp_buf) are those of xp_x [xp_n][xp_K], made by the op that
     * wrote it, while g_writes is still xp_seq (no kernel or copy since): the next product of
     * xp_x reads them. xp_next: the buffer the next op making pieces stores them in */
    const float *xp_x;
    const uint4 *xp_p;
    const void *xp_norm; /* non-NULL: norm pieces, those of xp_norm * xp_x, with tile squares xp_ss */
    const float *xp_ss;
    int xp_n, xp_K, xp_next;
    uint64_t xp_seq;
    int att_gqa_min;   /* k_attention with a KV head's query heads per block from this many tokens on (DSPARK_CUDA_ATT) */
    bool att_pf;       /* k_attention prefetches its K/V rows into L2 before pdl_wait (DSPARK_CUDA_ATT_PREFETCH=0: off) */
    int att_chunk;     /* k_attention's keys per chunk (DSPARK_CUDA_ATT_CHUNK; 0: by key count, att_chunk_of) */
    bool att_tc;       /* k_attention_tc where it applies (DSPARK_CUDA_ATT_TC=1) */
    bool att_r8;       /* k_attention_r8 where it applies and att_tc does not (DSPARK_CUDA_ATT_R8=1) */
    int att_tg;        /* its tokens per block (DSPARK_CUDA_ATT_TG; 0: 16 / its heads) */
    int att_z;         /* k_attention's blocks per (token, head block) (DSPARK_CUDA_ATT_Z 1..ATT_SPLITS; 0: by the launch, cu_attention) */
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

/* kernels launched and device writes issued so far (the pieces' validity, CudaImpl's xp_seq) */
static uint64_t g_writes;

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
    g_writes++;
}

/* x's pieces (k_matmul_col): the buffer an op writing x [n][K] stores them in, or NULL (then the
 * product makes them itself); xp_made after its launches; xp_of: the pieces of x, if they are
 * still those in the buffer */
static uint16_t *xp_buffer(CudaImpl *c, int n, int K) {
    const bool fits = c->mm.col && c->mm.tc == 3 && n <= CUDA_SMALL_N && K % 32 == 0 && (size_t)n * K * 3 <= c->mm.xp_cap;
    return fits ? (uint16_t *)c->mm.xp_buf[c->xp_next] : NULL; /* (not the registered pieces: the op may be reading them) */
}
static void xp_made(CudaImpl *c, const float *x, const uint16_t *buf, int n, int K) {
    c->xp_x = x;
    c->xp_p = (const uint4 *)buf;
    c->xp_norm = NULL;
    c->xp_ss = NULL;
    c->xp_n = n;
    c->xp_K = K;
    c->xp_seq = g_writes;
    c->xp_next = buf == (const uint16_t *)c->mm.xp_buf[0];
}
static const uint4 *xp_of(const CudaImpl *c, const float *x, int n, int K) {
    return c->xp_x == x && !c->xp_norm && c->xp_n == n && c->xp_K == K && c->xp_seq == g_writes ? c->xp_p : NULL;
}
/* norm pieces (matmul_tc.cuh): the tile squares' buffer beside xp_buffer's; made, and found */
static float *np_squares(CudaImpl *c) { return c->mm.ss_buf[c->xp_next]; }
static void np_made(CudaImpl *c, const float *x, const void *norm, const uint16_t *buf, const float *ss, int n, int K) {
    xp_made(c, x, buf, n, K);
    c->xp_norm = norm;
    c->xp_ss = ss;
}
static const uint4 *np_of(const CudaImpl *c, const float *x, const void *norm, int n, int K, const float **ss) {
    const bool ok = c->xp_x == x && c->xp_norm == norm && c->xp_n == n && c->xp_K == K && c->xp_seq == g_writes;
    *ss = ok ? c->xp_ss : NULL;
    return ok ? c->xp_p : NULL;
}
/* room for the pieces of CUDA_SMALL_N rows of K (at each weight's upload, outside any graph; a
 * graph recorded with the old buffer is not replayed) */
static void xp_reserve(CudaImpl *c, int K) {
    const size_t need = (size_t)CUDA_SMALL_N * K * 3;
    if (need <= c->mm.xp_cap) return;
    uint4 *p[2] = {NULL, NULL};
    float *q[2] = {NULL, NULL};
    const size_t ss_bytes = sizeof(float) * CUDA_SMALL_N * (K / 16);
    if (cudaMalloc(&p[0], need * sizeof(uint16_t)) != cudaSuccess || cudaMalloc(&p[1], need * sizeof(uint16_t)) != cudaSuccess ||
        cudaMalloc(&q[0], ss_bytes) != cudaSuccess || cudaMalloc(&q[1], ss_bytes) != cudaSuccess) {
        cudaGetLastError(); /* (then the products split x themselves) */
        for (int b = 0; b < 2; b++) {
            if (p[b]) cudaFree(p[b]);
            if (q[b]) cudaFree(q[b]);
        }
        return;
    }
    if (c->mm.xp_buf[0]) graphs_new_epoch(c);
    for (int b = 0; b < 2; b++) {
        if (c->mm.xp_buf[b]) CU(cudaFree(c->mm.xp_buf[b]));
        if (c->mm.ss_buf[b]) CU(cudaFree(c->mm.ss_buf[b]));
        c->mm.xp_buf[b] = p[b];
        c->mm.ss_buf[b] = q[b];
    }
    c->mm.xp_cap = need;
    c->xp_x = NULL;
}

static void *cu_alloc(Backend *be, size_t bytes) {
    graph_outside(be, "alloc");
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 256) != cudaSuccess) {
        cudaGetLastError(); /* clear it: the caller reports out of memory */
        return NULL;
    }
    CU(cudaMemsetAsync(p, 0, bytes, stream_of(be)));
    g_writes++;
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
    g_writes++;
}
static void cu_to_host(Backend *be, void *dst, const void *src, size_t bytes) {
    graph_outside(be, "to_host");
    if (bytes) CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_of(be)));
    CU(cudaStreamSynchronize(stream_of(be)));
}
static void cu_copy(Backend *be, void *dst, const void *src, size_t bytes) {
    if (graph_skip(be, 1, dst, src, bytes)) return;
    if (bytes && dst != src) CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_of(be)));
    g_writes++;
}
static void cu_sync(Backend *be) { graph_outside(be, "synchronize"); CU(cudaStreamSynchronize(stream_of(be))); }

/* Weight.dev_layout: row-major as on the host, or tiles (cuda_common.cuh's tile_at) */
enum { WL_ROWS = 0, WL_TILES = 1 };
__global__ void k_tile(uint4 *dst, const uint4 *src, int O, int K, int rows); /* matmul_tc.cuh */
static ds_status cu_upload_weight(Backend *be, Weight *w, char *err) {
    graph_outside(be, "upload_weight");
    if (w->dev) return DS_OK;
    if (w->dtype != DS_F32 && w->dtype != DS_BF16 && w->dtype != DS_F16)
        return ds_err(err, DS_EUNSUPPORTED, "cuda: %s weights are not supported (F32, BF16 or F16)", ds_dtype_name(w->dtype));
    /* a matrix k_matmul_tc will read: in tiles (WL_TILES), the last one padded with zero rows */
    CudaImpl *c = impl(be);
    const bool tiles = c->tiles && w->dtype == DS_BF16 && w->cols % 32 == 0 && w->rows >= 16;
    const size_t bytes = (size_t)w->rows * w->cols * ds_dtype_size(w->dtype);
    const size_t dev_bytes = tiles ? (size_t)(w->rows + 15) / 16 * 16 * w->cols * 2 : bytes; /* (the last tile padded) */
    void *p = NULL, *rows = NULL;
    if (cudaMalloc(&p, dev_bytes) != cudaSuccess || (tiles && cudaMalloc(&rows, bytes) != cudaSuccess)) {
        if (p) cudaFree(p);
        cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        return ds_err(err, DS_ENOMEM, "cuda: out of GPU memory for a %dx%d %s weight (%.1f MB%s; %.1f of %.1f GB free)", w->rows, w->cols,
                      ds_dtype_name(w->dtype), dev_bytes / 1e6, tiles ? " and as much again while it is tiled" : "", free_b / 1e9,
                      total_b / 1e9);
    }
    /* on our stream: a legacy-stream copy from pageable memory may still be in flight when it
     * returns, and our non-blocking stream would not wait for it */
    cudaError_t e = cudaMemcpyAsync(tiles ? rows : p, w->host, bytes, cudaMemcpyHostToDevice, stream_of(be));
    if (e == cudaSuccess && tiles) {
        const int padded = (w->rows + 15) / 16 * 16;
        launch(stream_of(be), false, k_tile, blocks_for(dev_bytes / 16, 256 * 4), 256, 0, (uint4 *)p, (const uint4 *)rows, w->rows, w->cols, padded);
        if ((e = cudaGetLastError()) == cudaSuccess) e = cudaStreamSynchronize(stream_of(be)); /* before rows is freed */
    }
    if (rows) cudaFree(rows);
    if (e != cudaSuccess) {
        cudaFree(p);
        return ds_err(err, DS_EDEVICE, "cuda: copying a %dx%d weight to the GPU: %s", w->rows, w->cols, cudaGetErrorString(e));
    }
    w->dev = p;
    w->dev_layout = tiles ? WL_TILES : WL_ROWS;
    if (w->dtype == DS_BF16 && w->cols % 32 == 0) xp_reserve(c, w->cols);
    return DS_OK;
}
static void cu_release_weight(Backend *be, Weight *w) {
    graph_outside(be, "release_weight");
    if (w->dev) CU(cudaFree(w->dev));
    w->dev = NULL;
    w->dev_layout = 0;
}

/* ---- kernels (one file per kind) ---- */

#include "cuda_common.cuh"
#include "elementwise.cuh"
#include "matmul_fma.cuh"
#include "matmul_tc.cuh"
#include "norm_rope.cuh"
#include "attention.cuh"
#include "attention_r8.cuh"
#include "attention_tc.cuh"

/* ---- ops ---- */

static bool pdl_of(Backend *be) { return impl(be)->mm.pdl; }

static void cu_embed(Backend *be, float *out, const Weight *table, const int32_t *ids, int n) {
    if (n <= 0 || graph_skip(be, 2, out, table->dev, (int)table->dtype, table->cols, ids, n)) return;
    launch(stream_of(be), pdl_of(be), k_embed, n, 256, 0, out, table->dev, (int)table->dtype, table->dev_layout == WL_TILES, ids, table->cols);
    LAUNCHED("embed");
}

template <int NB, int R, int DT, bool VEC>
static void matmul_launch_ref(cudaStream_t st, float *out, const float *x, const void *w, int n, int K, int O) {
    launch(st, false, k_matmul_ref<NB, R, DT, VEC>, (unsigned)((O + R - 1) / R), 256, 0, out, x, w, n, K, O);
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
            launch(st, cfg->pdl, k_matmul_pf<NB, C, DT>, (unsigned)grid, 256, 0, mm, x, n, K);
            return;
        }
    }
    if (multi) launch(st, cfg->pdl, k_matmul_multi<NB, C, DT, VEC>, (unsigned)G, 256, 0, mm, x, n, K);
    else launch(st, cfg->pdl, k_matmul<NB, C, DT, VEC>, (unsigned)G, 256, 0, out, x, w, n, K, O);
}

/* one launch for any n <= CUDA_SMALL_N: NB rows per chunk (n rounded up to 1, 2, 4, then 8
 * with the block looping over the chunks) and C columns per block (cfg->cols by bucket; the
 * BF16 vector path, the one that decodes, takes 2, 4 or 8, the rest 4) */
template <int NB, int DT, bool VEC>
static void matmul_cols(cudaStream_t st, const MmCfg *cfg, int cols, float *out, const float *x, const void *w, int n, int K, int O,
                        const MmMulti *multi) {
    if constexpr (DT == DS_BF16 && VEC) { /* (C 2 and 8 compiled for this path only) */
        if (cols == 2) {
            matmul_launch<NB, 2, DT, VEC>(st, cfg, out, x, w, n, K, O, multi);
            return;
        }
        if (cols == 8) {
            matmul_launch<NB, 8, DT, VEC>(st, cfg, out, x, w, n, K, O, multi);
            return;
        }
    }
    matmul_launch<NB, 4, DT, VEC>(st, cfg, out, x, w, n, K, O, multi);
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
template <int MT, int NT, int P, bool NORM>
static void matmul_tc_u(cudaStream_t st, bool pdl, const MmMulti &mm, unsigned grid, const float *x, int n, int K, int deep, int pf) {
    constexpr int U = 4 / (MT > NT ? MT : NT) > 1 ? 4 / (MT > NT ? MT : NT) : 1;
    if constexpr (P == 3 && !NORM) { /* (the folded norm has the default depth only) */
        if (deep == 1) {
            launch(st, pdl, k_matmul_tc<MT, NT, P, 2 * U, false>, grid, 256, 0, mm, x, n, K, pf);
            return;
        }
        if (deep == 2) {
            launch(st, pdl, k_matmul_tc<MT, NT, P, U >= 2 ? U / 2 : 1, false>, grid, 256, 0, mm, x, n, K, pf);
            return;
        }
    }
    launch(st, pdl, k_matmul_tc<MT, NT, P, U, NORM>, grid, 256, 0, mm, x, n, K, pf);
}
template <int MT, int P>
static void matmul_tc_nt(cudaStream_t st, bool pdl, const MmMulti &mm, unsigned grid, const float *x, int n, int K, int deep, int pf) {
    if (n <= 8) matmul_tc_u<MT, 1, P, false>(st, pdl, mm, grid, x, n, K, deep, pf);
    else if (n <= 16) matmul_tc_u<MT, 2, P, false>(st, pdl, mm, grid, x, n, K, deep, pf);
    else if (n <= 32) matmul_tc_u<MT, 4, P, false>(st, pdl, mm, grid, x, n, K, deep, pf);
    else if constexpr (MT <= 2) matmul_tc_u<MT, 8, P, false>(st, pdl, mm, grid, x, n, K, deep, pf);
}
/* the column product (k_matmul_col) of mm's plain segments: xp, x's pieces, or NULL */
static void matmul_col(cudaStream_t st, const MmCfg *cfg, MmMulti &mm, const float *x, const uint4 *xp, int n, int K) {
    auto bucket = [](int r) { return r <= 2 ? 0 : r <= 5 ? 1 : r <= 8 ? 2 : 3; };
    int rows = mm.act ? 2 * mm.O[0] : 0;
    for (int j = 0; j < mm.count && !mm.act; j++) rows += mm.O[j];
    const int bn = bucket(n < 16 ? n : 16), cr = bn == 2 && rows < 4096 ? cfg->col_chunk[4] : cfg->col_chunk[bn];
    const int nr = n < cr ? n : cr, chunks = (n + cr - 1) / cr, b = bucket(nr);
    /* [4]: 1-2 rows of a wide product reading pieces from memory (q/k/v and lm_head after norm pieces) */
    const int mt = mm.act ? 2 : b == 0 && rows >= 4096 && xp ? cfg->col_mt[4] : cfg->col_mt[b], u = cfg->col_u[b];
    DS_ASSERT(!mm.ss_in || xp); /* (norm pieces: x itself is not what the product multiplies) */
    int G = 0;
    if (mm.act) G = (mm.O[0] + 15) / 16; /* gate and up paired: a block per 16 rows of both */
    else
        for (int j = 0; j < mm.count; j++) mm.g_end[j] = G += (mm.O[j] + 16 * mt - 1) / (16 * mt);
    /* 3 rows or more without pieces: k_split_x makes them (each lane splitting its own would
     * split each row 3 times over at 3-8 rows), in the buffer the product does not store in */
    if (!xp && nr >= 3 && cfg->xp_buf[0] && (size_t)n * K * 3 <= cfg->xp_cap) {
        const uint16_t *stores = mm.xp_out ? mm.xp_out : mm.np_out; /* (at most one of them) */
        uint4 *to = stores == (const uint16_t *)cfg->xp_buf[0] ? cfg->xp_buf[1] : cfg->xp_buf[0];
        launch(st, cfg->pdl, k_split_x, blocks_for((size_t)n * K / 8, 256), 256, 0, to, x, n, K);
        xp = to;
    }
    const unsigned grid = (unsigned)(G * chunks);
#define COL_MT(NC, U, MT) \
    do { \
        if (xp) launch(st, cfg->pdl, k_matmul_col<NC, U, true, MT>, grid, 256, 0, mm, x, xp, n, K, cr); \
        else launch(st, cfg->pdl, k_matmul_col<NC, U, false, MT>, grid, 256, 0, mm, x, xp, n, K, cr); \
    } while (0)
#define COL(NC, U) \
    do { \
        if (mt == 2) COL_MT(NC, U, 2); \
        else COL_MT(NC, U, 1); \
    } while (0)
    if (b == 0) COL(1, 4); /* (the instances of U measured) */
    else if (b == 1) COL(2, 2);
    else if (b == 2 && u == 4) COL(3, 4);
    else if (b == 2) COL(3, 2);
    else if (u == 2) COL(6, 2);
    else COL(6, 1);
#undef COL
#undef COL_MT
}

static void matmul_tc(cudaStream_t st, const MmCfg *cfg, float *out, const float *x, const void *w, int n, int K, int O,
                      const MmMulti *multi, int layout, const uint4 *xp) {
    if (n > CUDA_SMALL_N) { /* (no cuBLAS) launches of CUDA_SMALL_N rows: a row's values do not depend on n */
        DS_ASSERT(!multi);
        for (int i0 = 0; i0 < n; i0 += CUDA_SMALL_N)
            matmul_tc(st, cfg, out + (size_t)i0 * O, x + (size_t)i0 * K, w, n - i0 < CUDA_SMALL_N ? n - i0 : CUDA_SMALL_N, K, O, NULL, layout, NULL);
        return;
    }
    MmMulti mm = mm_segments(multi, out, w, O);
    mm.layout = layout;
    if (cfg->col && cfg->tc == 3 && !mm.norm && !mm.rscale) {
        matmul_col(st, cfg, mm, x, xp, n, K);
        return;
    }
    DS_ASSERT(!mm.ss_in && !mm.np_out); /* (norm pieces: k_matmul_col's alone) */
    const int b = n <= 1 ? 0 : n <= 8 ? 1 : n <= 16 ? 2 : n <= 32 ? 3 : 4;
    int rows = 0;
    for (int j = 0; j < mm.count; j++) rows += mm.O[j];
    /* auto (measured on the H200, docs/bench-cuda.md): row-major, 2 tiles per block for
     * lm_head-sized launches up to 32 rows of x (x split once for 32 weight rows), else 1 (more
     * blocks); tiled, 1 (2 was 0-8% slower at 1-16 rows) */
    int mt = cfg->tc_mt[b] ? cfg->tc_mt[b] : rows >= 65536 && n <= 32 && layout == WL_ROWS ? 2 : 1;
    if (cfg->tc < 3) mt = 1;
    if (n > 32 && mt > 2) mt = 2;
    if (mm.norm && mt > 2) mt = 2; /* (NORM instances: 1 and 2 tiles) */
    int G = 0;
    if (mm.act) { /* gate/up paired (cu_matmul_multi checked tc == 3): a block per 16 rows of both */
        mt = 2;
        G = (mm.O[0] + 15) / 16;
    } else
        for (int j = 0; j < mm.count; j++) mm.g_end[j] = G += (mm.O[j] + 16 * mt - 1) / (16 * mt);
    const unsigned grid = (unsigned)G;
    /* U: k-steps per round (weights and x in flight at once), 4 / max(MT, NT) (deep 1: twice, 2:
     * half; twice for the grids under 2 blocks per SM alone, o_proj and down_proj, made them 40%
     * slower: docs/bench-cuda.md) */
    const int deep = cfg->tc_deep, pf = cfg->tc_pf;
    const bool pdl = cfg->pdl;
    if (mm.norm) { /* (cu_matmul_norm: tc == 3, n <= 8) */
        if (mt == 1) matmul_tc_u<1, 1, 3, true>(st, pdl, mm, grid, x, n, K, 0, pf);
        else matmul_tc_u<2, 1, 3, true>(st, pdl, mm, grid, x, n, K, 0, pf);
    } else if (cfg->tc == 1) matmul_tc_nt<1, 1>(st, pdl, mm, grid, x, n, K, 0, pf);
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
                            const MmMulti *multi, const uint4 *xp) {
    const bool vec = mm_vec(x, w, K);
    if (mm_tc(cfg, DT, x, w, K)) matmul_tc(st, cfg, out, x, w, n, K, O, multi, WL_ROWS, xp);
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
    g_writes++; /* (its own launches) */
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
        launch(c->stream, false, k_widen, blocks_for(count, 256 * 8), 256, 0, c->wide, w->dev, w->dtype, w->dev_layout == WL_TILES, K, (size_t)r0, count);
        LAUNCHED("widen");
        blas_check(c->blas.sgemm(c->blas.h, CUBLAS_OP_T, CUBLAS_OP_N, rc, n, K, &one, c->wide, K, x, K, &zero, out + r0, O), "sgemm");
    }
}

/* a product of a tiled weight: k_matmul_tc is its only reader, so x that is not 16-byte
 * aligned (none of the models' calls) is first copied to c->wide, CUDA_SMALL_N rows at a time */
static void matmul_tiles(CudaImpl *c, float *out, const float *x, const Weight *w, int n, const MmMulti *multi, const uint4 *xp) {
    const int K = w->cols, O = w->rows;
    if (((uintptr_t)x & 15) == 0) {
        matmul_tc(c->stream, &c->mm, out, x, w->dev, n, K, O, multi, WL_TILES, xp);
        return;
    }
    DS_ASSERT((size_t)CUDA_SMALL_N * K <= WIDE_ELEMS && (!multi || n <= CUDA_SMALL_N));
    if (!c->wide) {
        if (c->g_mode == G_CAPTURE) { /* (cudaMalloc outside any capture: the bracket runs again eagerly) */
            g_capture_broken = true;
            return;
        }
        CU(cudaMalloc(&c->wide, sizeof(float) * WIDE_ELEMS));
    }
    for (int i0 = 0; i0 < n; i0 += CUDA_SMALL_N) {
        const int nc = n - i0 < CUDA_SMALL_N ? n - i0 : CUDA_SMALL_N;
        CU(cudaMemcpyAsync(c->wide, x + (size_t)i0 * K, sizeof(float) * nc * K, cudaMemcpyDeviceToDevice, c->stream));
        matmul_tc(c->stream, &c->mm, out + (size_t)i0 * O, c->wide, w->dev, nc, K, O, multi, WL_TILES, i0 == 0 && nc == n ? xp : NULL);
    }
}

static void matmul_launch_any(CudaImpl *c, float *out, const float *x, const Weight *w, int n, const MmMulti *multi, const uint4 *xp);

/* a product, launched (no graph logging: cu_matmul and cu_matmul_multi log their own calls);
 * the paired gate/up store (multi->act) also stores the pieces of out[0] for down_proj */
static void matmul_run(Backend *be, float *out, const float *x, const Weight *w, int n, const MmMulti *multi, const uint4 *xp_given = NULL) {
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
    /* (before the staging copy in matmul_tiles bumps g_writes); given: norm pieces */
    const uint4 *xp = xp_given ? xp_given : xp_of(c, x, n, w->cols);
    MmMulti paired;
    if (multi && multi->act) {
        paired = *multi;
        paired.xp_out = xp_buffer(c, n, w->rows);
        multi = &paired;
    }
    matmul_launch_any(c, out, x, w, n, multi, xp);
    LAUNCHED("matmul");
    if (multi && multi->xp_out) xp_made(c, multi->out[0], multi->xp_out, n, w->rows);
}
static void matmul_launch_any(CudaImpl *c, float *out, const float *x, const Weight *w, int n, const MmMulti *multi, const uint4 *xp) {
    if (w->dev_layout == WL_TILES) {
        matmul_tiles(c, out, x, w, n, multi, xp);
        return;
    }
    switch (w->dtype) {
    case DS_BF16: matmul_small_dt<DS_BF16>(c->stream, &c->mm, out, x, w->dev, n, w->cols, w->rows, multi, xp); break;
    case DS_F16: matmul_small_dt<DS_F16>(c->stream, &c->mm, out, x, w->dev, n, w->cols, w->rows, multi, NULL); break;
    default: matmul_small_dt<DS_F32>(c->stream, &c->mm, out, x, w->dev, n, w->cols, w->rows, multi, NULL); break;
    }
}

static void cu_matmul(Backend *be, float *out, const float *x, const Weight *w, int n) {
    if (n <= 0 || graph_skip(be, 3, out, x, w->dev, (int)w->dtype, w->rows, w->cols, n)) return;
    matmul_run(be, out, x, w, n, NULL);
}

static void swiglu_run(cudaStream_t st, bool pdl, float *out, const float *gate, const float *up, size_t n);

/* backend.h's matmul_multi: one launch when the weights share dtype and vector path (q/k/v,
 * gate/up), else the separate products; act 1: then swiglu into outs[0], as the model would */
/* graph_skip for the products of one x (matmul_multi, matmul_norm): op, its arguments, then
 * each product's output and weight */
template <typename... A>
static bool graph_skip_products(Backend *be, int op, float *const *outs, const Weight *const *ws, int count, const A &...a) {
    CudaImpl *c = impl(be);
    if (c->g_mode == G_OFF) return false;
    graph_skip(be, op, a...);
    for (int j = 0; j < count; j++) {
        const void *p[2] = {outs[j], ws[j]->dev};
        const int d[3] = {(int)ws[j]->dtype, ws[j]->rows, ws[j]->cols};
        glog_bytes(c, p, sizeof p);
        glog_bytes(c, d, sizeof d);
    }
    return c->g_mode == G_CHECK;
}

/* the segments of count products of one x (outs[j] = x . ws[j]^T), nothing folded */
static MmMulti mm_products(float *const *outs, const Weight *const *ws, int count) {
    MmMulti mm;
    memset(&mm, 0, sizeof mm);
    mm.count = count;
    for (int j = 0; j < count; j++) {
        mm.out[j] = outs[j];
        mm.w[j] = ws[j]->dev;
        mm.O[j] = ws[j]->rows;
    }
    return mm;
}

static void matmul_multi_run(Backend *be, float *const *outs, const float *x, const Weight *const *ws, int count, int n, int act) {
    CudaImpl *c = impl(be);
    bool fuse = count <= 3 && n <= CUDA_SMALL_N && !c->mm.ref;
    for (int j = 0; j < count && fuse; j++)
        fuse = ws[j]->dtype == ws[0]->dtype && ws[j]->cols == ws[0]->cols && ws[j]->dev_layout == ws[0]->dev_layout && mm_vec(x, ws[j]->dev, ws[j]->cols) == mm_vec(x, ws[0]->dev, ws[0]->cols) &&
               mm_tc(&c->mm, ws[j]->dtype, x, ws[j]->dev, ws[j]->cols) == mm_tc(&c->mm, ws[0]->dtype, x, ws[0]->dev, ws[0]->cols);
    if (fuse) {
        MmMulti mm = mm_products(outs, ws, count);
        /* swiglu in k_matmul_tc's store (a launch less per layer; bitwise k_swiglu's values) */
        mm.act = act == 1 && c->fuse && count == 2 && ws[0]->rows == ws[1]->rows && c->mm.tc == 3 &&
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
static void cu_matmul_multi(Backend *be, float *const *outs, const float *x, const Weight *const *ws, int count, int n, int act) {
    if (n <= 0 || count <= 0 || graph_skip_products(be, 13, outs, ws, count, count, n, act, x)) return;
    matmul_multi_run(be, outs, x, ws, count, n, act);
}

/* the launches of rmsnorm and add (the ops without their graph log: the fallbacks below log
 * their own call once) */
static void rmsnorm_run(Backend *be, float *out, const float *x, const Weight *w, int n, int dim, float eps);
static void add_run(Backend *be, float *x, const float *y, size_t n);

/* matmul_norm and matmul_add inside k_matmul_tc (its NORM, tc_store's add): BF16 products of
 * <= CUDA_SMALL_N rows on the 3-piece tensor-core path, one K; else the separate ops */
static bool mm_fold(CudaImpl *c, const float *x, const Weight *const *ws, int count, int n) {
    if (!c->fold || n > CUDA_SMALL_N || c->mm.tc != 3 || count > 3) return false;
    for (int j = 0; j < count; j++)
        if (ws[j]->cols != ws[0]->cols || ws[j]->dev_layout != ws[0]->dev_layout || !mm_tc(&c->mm, ws[j]->dtype, x, ws[j]->dev, ws[j]->cols))
            return false;
    return true;
}

/* backend.h's matmul_norm: the rmsnorm folded into the products (k_matmul_tc's NORM: one
 * launch, no norm kernel), or rmsnorm into tmp and then matmul_multi */
static void cu_matmul_norm(Backend *be, float *const *outs, const float *x, const Weight *norm, float eps, const Weight *const *ws, int count,
                           int n, int act, float *tmp) {
    if (n <= 0 || count <= 0 || graph_skip_products(be, 15, outs, ws, count, count, n, act, x, norm->dev, (int)norm->dtype, eps, tmp)) return;
    CudaImpl *c = impl(be);
    const int K = ws[0]->cols;
    bool fold = mm_fold(c, x, ws, count, n) && norm->dtype == DS_BF16 && (size_t)norm->rows * norm->cols == (size_t)K &&
                ((uintptr_t)norm->dev & 15) == 0 && ((uintptr_t)tmp & 15) == 0;
    if (act == 1) fold = fold && count == 2 && ws[0]->rows == ws[1]->rows; /* the paired store */
    if (!fold) {
        rmsnorm_run(be, tmp, x, norm, n, K, eps);
        matmul_multi_run(be, outs, tmp, ws, count, n, act);
        return;
    }
    MmMulti mm = mm_products(outs, ws, count);
    mm.act = act == 1;
    if (c->mm.np && (act != 1 || c->mm.np_act) && ((uintptr_t)x & 15) == 0 && K % 16 == 0) { /* norm pieces (matmul_tc.cuh), made here unless the op writing x made them */
        const float *ss;
        const uint4 *xp = np_of(c, x, norm->dev, n, K, &ss);
        uint16_t *buf = xp ? NULL : xp_buffer(c, n, K);
        if (buf) {
            float *sq = np_squares(c);
            launch(c->stream, c->mm.pdl, k_norm_pieces, dim3((unsigned)(K / 16 + 15) / 16, (unsigned)n), 256, 0, buf, sq, x, (const uint16_t *)norm->dev, K);
            LAUNCHED("norm_pieces");
            np_made(c, x, norm->dev, buf, sq, n, K);
            xp = (const uint4 *)buf;
            ss = sq;
        }
        if (xp) {
            mm.ss_in = ss;
            mm.eps = eps;
            matmul_run(be, outs[0], x, ws[0], n, &mm, xp);
            return;
        }
    }
    if (n <= 8) { /* NORM: one launch */
        mm.norm = norm->dev;
        mm.eps = eps;
        matmul_run(be, outs[0], x, ws[0], n, &mm);
        return;
    }
    /* above 8 rows NORM's registers (nw and the squares of each x tile) cost its instances a
     * resident block per SM or spill (16-64 tokens 7-14% slower on the H200, docs/bench-cuda.md):
     * the same values from k_norm_prep and the plain product scaled in its store */
    launch(c->stream, c->mm.pdl, k_norm_prep, n, 256, 0, tmp, c->norm_r, x, (const uint16_t *)norm->dev, K, eps);
    LAUNCHED("norm_prep");
    mm.rscale = c->norm_r;
    matmul_run(be, outs[0], tmp, ws[0], n, &mm);
}

/* backend.h's matmul_add: the residual add in k_matmul_tc's store, or the product into tmp
 * and then add (the same bits); with next_norm, on the column product, the store also makes
 * the norm pieces of out for the matmul_norm by next_norm that reads it (matmul_tc.cuh) */
static void cu_matmul_add(Backend *be, float *out, const float *x, const Weight *w, int n, float *tmp, const Weight *next_norm) {
    if (n <= 0 || graph_skip(be, 16, out, x, w->dev, (int)w->dtype, w->rows, w->cols, n, tmp, next_norm ? next_norm->dev : NULL)) return;
    CudaImpl *c = impl(be);
    if (!mm_fold(c, x, &w, 1, n)) {
        matmul_run(be, tmp, x, w, n, NULL);
        add_run(be, out, tmp, (size_t)n * w->rows);
        return;
    }
    MmMulti mm = mm_segments(NULL, out, w->dev, w->rows);
    mm.add = 1;
    const int O = w->rows;
    if (next_norm && c->mm.np && next_norm->dtype == DS_BF16 && (size_t)next_norm->rows * next_norm->cols == (size_t)O && O % 16 == 0 &&
        (mm.np_out = xp_buffer(c, n, O)) != NULL) {
        mm.np_norm = next_norm->dev;
        mm.ss_out = np_squares(c);
    }
    matmul_run(be, out, x, w, n, &mm);
    if (mm.np_out) np_made(c, out, next_norm->dev, mm.np_out, mm.ss_out, n, O);
}

static void cu_rmsnorm(Backend *be, float *out, const float *x, const Weight *w, int n, int dim, float eps) {
    if (n <= 0 || graph_skip(be, 4, out, x, w->dev, (int)w->dtype, n, dim, eps)) return;
    rmsnorm_run(be, out, x, w, n, dim, eps);
}
static void rmsnorm_run(Backend *be, float *out, const float *x, const Weight *w, int n, int dim, float eps) {
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

void backend_cuda_set_fused(Backend *be, bool on, bool fold) {
    CudaImpl *c = impl(be);
    c->fuse = on;
    c->fold = on && fold;
    be->qk_norm_rope_kv = on ? cu_qk_norm_rope_kv : NULL;
    be->add_rmsnorm = on ? cu_add_rmsnorm : NULL;
    be->matmul_norm = c->fold ? cu_matmul_norm : NULL;
    be->matmul_add = c->fold ? cu_matmul_add : NULL;
}

/* k_attention's instances: GQ > 1 only where GQ * DPL <= 32 (the caller checks); float4 rows
 * (V4) where a lane's dims come in fours and rows are 16-byte aligned */
template <int DPL, int GQ>
static void att_launch(cudaStream_t st, bool pdl, dim3 grid, size_t smem, float *part, const float *q, const KvCache *kv, const int32_t *slot,
                       const int32_t *kv_len, int layer, int n_heads, int group, int head_dim, float scale, int chunk, bool pf,
                       float *out, uint16_t *xp, int *count) {
    if constexpr (GQ == 1 || DPL * GQ <= 32) {
        auto k = k_attention<DPL, GQ, false>;
        if constexpr (DPL % 4 == 0)
            if (head_dim % 4 == 0) k = k_attention<DPL, GQ, true>;
        launch(st, pdl, k, grid, 32 * ATT_WARPS, smem, part, q, (const float *)kv->k, (const float *)kv->v, slot, kv_len, layer,
               kv->n_slots, kv->max_ctx, kv->kv_dim, n_heads, group, head_dim, scale, chunk, pf, out, xp, count);
    }
}

/* k_attention_r8's instances (head_dim = 8 DPL) */
template <int DPL>
static void atr_launch(cudaStream_t st, bool pdl, int gq, dim3 grid, size_t smem, float *part, const float *q, const KvCache *kv, const int32_t *slot,
                       const int32_t *kv_len, int layer, int n_heads, int group, int head_dim, float scale, int chunk, bool pf, float *out,
                       uint16_t *xp, int *count) {
    auto k = gq == 8 ? k_attention_r8<DPL, 8> : gq == 4 ? k_attention_r8<DPL, 4> : gq == 2 ? k_attention_r8<DPL, 2> : k_attention_r8<DPL, 1>;
    launch(st, pdl, k, grid, 8 * ATR_STREAMS * gq, smem, part, q, (const float *)kv->k, (const float *)kv->v, slot, kv_len, layer, kv->n_slots,
           kv->max_ctx, kv->kv_dim, n_heads, group, head_dim, scale, chunk, pf, out, xp, count);
}

/* attention's blocks per (token, head block), for per_z blocks in each: the splits a token may
 * have (ATT_SPLITS) while a launch has fewer blocks than 2 an SM; beyond that a block takes
 * several splits in turn. The splits a short token lacks would be blocks that exit at once
 * after the rest have run (H100, context 512: 64 tokens 16.0 -> 15.4 ms, 8 tokens level;
 * docs/bench-cuda.md). DSPARK_CUDA_ATT_Z fixes it. */
static int att_grid_z(const CudaImpl *c, int per_z) {
    const int z = 2 * c->mm.nsm / per_z;
    return c->att_z ? c->att_z : z < 1 ? 1 : z > ATT_SPLITS ? ATT_SPLITS : z;
}

/* attention on the tensor cores (DSPARK_CUDA_ATT_TC=1) where k_attention_tc applies: 16 rows a
 * block, a KV head's gq query heads (the largest power of 2 <= 16 dividing the group) times tg
 * tokens; false: not launched */
static bool att_tc_launch(CudaImpl *c, float *out, const float *q, const KvCache *kv, int layer, const int32_t *slot, const int32_t *kv_len,
                          int n, int n_heads, int group, int head_dim, float scale2, bool pf, uint16_t *xp, int *count) {
    if (!c->att_tc || head_dim % 16 || head_dim > 128 || (size_t)kv->max_ctx * kv->kv_dim >= INT_MAX) return false; /* (its row offsets are ints) */
    cudaStream_t st = c->stream;
    int lgq = 4; /* log2 of the query heads a block takes */
    while (group % (1 << lgq)) lgq--;
    const int gq = 1 << lgq, tg = c->att_tg >= 1 && c->att_tg <= ATC_ROWS / gq ? c->att_tg : ATC_ROWS / gq, nby = (n + tg - 1) / tg;
    const dim3 grid((unsigned)(n_heads / gq), (unsigned)nby, (unsigned)att_grid_z(c, n_heads / gq * nby));
#define ATC(MT) \
    case MT: \
        launch(st, c->mm.pdl, k_attention_tc<MT>, grid, 32 * ATT_WARPS, atc_smem(head_dim), c->att_part, q, (const float *)kv->k, \
               (const float *)kv->v, slot, kv_len, layer, kv->n_slots, kv->max_ctx, kv->kv_dim, n, n_heads, group, lgq, tg, scale2, c->att_chunk, pf, \
               out, xp, count); \
        break;
    switch (head_dim / 16) { ATC_EACH_MT(ATC) }
#undef ATC
    LAUNCHED("attention (tensor cores)");
    return true;
}

/* attention with 8 lanes a row (DSPARK_CUDA_ATT_R8=1) where k_attention_r8 applies: a KV head's
 * query heads per block by k_attention's rule where their shared memory fits the default 48 KB
 * (else per head: the same bits); false: not launched */
static bool att_r8_launch(CudaImpl *c, float *out, const float *q, const KvCache *kv, int layer, const int32_t *slot, const int32_t *kv_len,
                          int n, int n_heads, int group, int head_dim, float scale2, bool pf, uint16_t *xp, int *count) {
    if (!c->att_r8 || !(head_dim == 32 || head_dim == 64 || head_dim == 128 || head_dim == 256)) return false;
    const size_t smem1 = sizeof(float) * ATR_STREAMS * ((size_t)head_dim + 2);
    const int gq = n >= c->att_gqa_min && (group == 2 || group == 4 || group == 8) && group * smem1 <= 48 * 1024 ? group : 1;
    const dim3 grid((unsigned)(n_heads / gq), (unsigned)n, (unsigned)att_grid_z(c, n_heads / gq * n));
#define ATR(D) \
    atr_launch<D>(c->stream, c->mm.pdl, gq, grid, gq * smem1, c->att_part, q, kv, slot, kv_len, layer, n_heads, group, head_dim, scale2, \
                  c->att_chunk, pf, out, xp, count)
    switch (head_dim) {
    case 32: ATR(4); break;
    case 64: ATR(8); break;
    case 128: ATR(16); break;
    default: ATR(32);
    }
#undef ATR
    LAUNCHED("attention (8 lanes a row)");
    return true;
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
    /* the scores in log2 units: 1 / sqrt(head_dim) times log2(e), folded into q (k_attention's ex2) */
    const float scale2 = (float)(1.4426950408889634 / sqrt((double)head_dim));
    const int group = n_heads / n_kv_heads;
    cudaStream_t st = c->stream;
    float *part = c->att_part;
    const bool pf = c->att_pf && head_dim % 4 == 0; /* (bulk prefetch: 16-byte rows) */
    uint16_t *xp = xp_buffer(c, n, n_heads * head_dim); /* the pieces of out for o_proj */
    if (!att_tc_launch(c, out, q, kv, layer, slot, kv_len, n, n_heads, group, head_dim, scale2, pf, xp, count) &&
        !att_r8_launch(c, out, q, kv, layer, slot, kv_len, n, n_heads, group, head_dim, scale2, pf, xp, count)) {
        const int dpl = head_dim <= 32 ? 1 : head_dim <= 64 ? 2 : head_dim <= 128 ? 4 : head_dim <= 256 ? 8 : 16;
        /* a KV head's query heads per block from att_gqa_min tokens on (at 1 token the per-head
         * blocks, 4x as many, win: docs/bench-cuda.md) */
        const int gq = n >= c->att_gqa_min && (group == 2 || group == 4 || group == 8) && group * dpl <= 32 ? group : 1;
        const dim3 grid((unsigned)(n_heads / gq), (unsigned)n, (unsigned)att_grid_z(c, n_heads / gq * n));
        const size_t smem = sizeof(float) * ATT_WARPS * (size_t)gq * ((size_t)head_dim + 2);
#define ATT(D, G) \
        att_launch<D, G>(st, c->mm.pdl, grid, smem, part, q, kv, slot, kv_len, layer, n_heads, group, head_dim, scale2, c->att_chunk, pf, out, \
                         xp, count)
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
    }
    if (!count) {
        launch(st, c->mm.pdl, k_attention_merge, dim3((unsigned)n_heads, (unsigned)n), 128, 0, out, xp, (const float *)part, kv_len, n_heads,
               head_dim, c->att_chunk);
        LAUNCHED("attention merge");
    }
    if (xp) xp_made(c, out, xp, n, n_heads * head_dim);
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
    add_run(be, x, y, n);
}
static void add_run(Backend *be, float *x, const float *y, size_t n) {
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
    g_writes++; /* no pieces cross a bracket: a graph reads only those its own ops made */
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
    g_writes++;
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
        g_writes++; /* (its kernels wrote: no pieces outlive a replay) */
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
    g_writes++;
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
        if (c->norm_r) cudaFree(c->norm_r);
        if (c->draw_scratch) cudaFree(c->draw_scratch);
        for (int b = 0; b < 2; b++) {
            if (c->mm.xp_buf[b]) cudaFree(c->mm.xp_buf[b]);
            if (c->mm.ss_buf[b]) cudaFree(c->mm.ss_buf[b]);
        }
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
#define DRAW_SCRATCH 16384
extern "C" void *backend_cuda_draw_scratch(const Backend *be, size_t bytes) {
    return bytes <= DRAW_SCRATCH ? ((const CudaImpl *)be->impl)->draw_scratch : NULL;
}

/* a setting by row bucket: "V" for every bucket or "V1,...,Vnb"; v[0..nb) filled, false when
 * s is NULL or starts with no number (with 2..nb - 1 numbers the first counts for all) */
static bool env_buckets(const char *s, int nb, int *v) {
    int t[8], k = s ? sscanf(s, "%d,%d,%d,%d,%d,%d,%d,%d", &t[0], &t[1], &t[2], &t[3], &t[4], &t[5], &t[6], &t[7]) : 0;
    if (k < 1 || nb > 8) return false;
    for (int i = 0; i < nb; i++) v[i] = t[k == nb ? i : 0];
    return true;
}

/* DSPARK_CUDA_MM_TC: 0 the F32-FMA kernel for BF16 weights too (before/after), 1 or 2 bf16
 * pieces of x (lossy: tests and measurements), default 3; DSPARK_CUDA_TC_MT: "M" or
 * "M1,M8,M16,M32,M64", 16-row tiles per block (1, 2 or 4) by row bucket; DSPARK_CUDA_TC_DEEP=1
 * or 2: twice or half the k-steps per round; DSPARK_CUDA_TC_PREFETCH=KB: L2 prefetch of each
 * weight row at block start, up to KB (default 0, off). None of these changes a value.
 * DSPARK_CUDA_COL=0: the plain products on k_matmul_tc too, not k_matmul_col (other bits:
 * before/after); DSPARK_CUDA_COL_MT, DSPARK_CUDA_COL_U: "V" or "V1,V3,V6,V9", k_matmul_col's
 * 16-row tiles per block (1, 2) and k-steps per round (1, 2, 4) by row bucket 1-2, 3-5, 6-8,
 * 9-64 (COL_MT: a fifth value for 1-2 rows of a wide product with its pieces from memory); DSPARK_CUDA_COL_CHUNK: rows of x per block (2..16) by the bucket of min(n, 16), and a
 * fifth value for 6-8 rows of a narrow product (< 4096 weight rows; 4 values: as the others) (no
 * value changes). DSPARK_CUDA_NORM_PIECES=0: matmul_norm on k_matmul_tc's NORM (and
 * k_norm_prep), not k_matmul_col from norm pieces (other bits: before/after); =1: the paired
 * gate/up + swiglu too (the default of a one-stream backend; a batched one keeps it on NORM;
 * =2 forces that; other bits). */
static void mm_tc_config(MmCfg *m, bool one_stream) {
    const char *tc = getenv("DSPARK_CUDA_MM_TC"), *mt = getenv("DSPARK_CUDA_TC_MT"), *deep = getenv("DSPARK_CUDA_TC_DEEP");
    m->tc_deep = deep && (deep[0] == '1' || deep[0] == '2') && !deep[1] ? deep[0] - '0' : 0;
    const char *pf = getenv("DSPARK_CUDA_TC_PREFETCH");
    const int pf_kb = pf ? atoi(pf) : -1;
    /* off by default: it helped single products that L2 could not hold, but cost 0.6 ms per
     * decode step of the 36-layer model (docs/bench-cuda.md) */
    m->tc_pf = pf_kb <= 0 ? 0 : pf_kb > 1 << 20 ? 1 << 30 : pf_kb * 1024;
    m->tc = m->ref ? 0 : 3;
    const char *col = getenv("DSPARK_CUDA_COL"), *col_mt = getenv("DSPARK_CUDA_COL_MT"), *col_u = getenv("DSPARK_CUDA_COL_U");
    const char *col_chunk = getenv("DSPARK_CUDA_COL_CHUNK");
    m->col = !(col && !strcmp(col, "0"));
    const char *np = getenv("DSPARK_CUDA_NORM_PIECES");
    m->np = m->col && !(np && !strcmp(np, "0"));
    /* the paired gate/up store stays on k_matmul_tc's NORM for batches: on the column product
     * it was 0.14-0.2 ms faster a decode step but 0.8-1.5 ms slower at 32-64 rows (H200 and
     * H100, docs/bench-cuda.md "Norm pieces", "One stream"), where its separate sums per piece
     * cost 3 times the registers and the 8-row chunks re-read the weights. A row must keep its
     * bits at every row count, so the choice is per process: one stream (generate, eval) takes
     * the column product; DSPARK_CUDA_NORM_PIECES=1 / 2 forces it on / off for the paired
     * store (=0: all of matmul_norm on k_matmul_tc) */
    m->np_act = m->np && (np && *np ? !strcmp(np, "1") : one_stream);
    /* (H200, bench_cuda --mm, docs/bench-cuda.md "Norm pieces": from 6 rows on, chunks of 8 rows
     * with 2 tiles and 2 k-steps per round beat 16-row chunks at every product and row count;
     * the narrow products at 6-8 rows (o_proj, down_proj: 2560 rows, 80 blocks of 2 tiles) are
     * faster as 2 chunks of 4 rows on 1 tile each) */
    /* col_mt[4] 2: q/k/v 14.1 -> 12.1 us and lm_head 203 -> 177.5 us at one row from norm pieces
     * (--mm, two runs each); a lane's own split (no pieces) is slower on 2 tiles, and the narrow
     * o_proj / down_proj would have 80 blocks */
    const int cmt[5] = {1, 1, 2, 2, 2}, cu[4] = {4, 2, 2, 2}, cch[5] = {16, 16, 8, 8, 4};
    int v4[5];
    for (int i = 0; i < 5; i++) {
        m->col_mt[i] = cmt[i];
        if (i < 4) m->col_u[i] = cu[i];
        m->col_chunk[i] = cch[i];
    }
    /* (a fifth value for the special cases; with 4, each takes its bucket's) */
    auto values = [](const char *e) {
        int commas = 0;
        for (const char *p = e; p && *p; p++) commas += *p == ',';
        return commas == 4 ? 5 : 4;
    };
    if (env_buckets(col_chunk, values(col_chunk), v4)) {
        if (values(col_chunk) == 4) v4[4] = v4[2]; /* (the narrow products at 6-8 rows as the others) */
        for (int i = 0; i < 5; i++)
            if (v4[i] >= 2 && v4[i] <= 16) m->col_chunk[i] = v4[i];
    }
    if (env_buckets(col_mt, values(col_mt), v4)) {
        if (values(col_mt) == 4) v4[4] = v4[0]; /* (the wide products at 1-2 rows as the others) */
        for (int i = 0; i < 5; i++)
            if (v4[i] == 1 || v4[i] == 2) m->col_mt[i] = v4[i];
    }
    if (env_buckets(col_u, 4, v4))
        for (int i = 0; i < 4; i++)
            if (v4[i] == 1 || v4[i] == 2 || v4[i] == 4) m->col_u[i] = v4[i];
    if (tc && tc[0] >= '0' && tc[0] <= '3' && !tc[1]) m->tc = m->ref ? 0 : tc[0] - '0';
    const int mt_default[5] = {0, 0, 0, 0, 0}; /* auto (matmul_tc) */
    for (int i = 0; i < 5; i++) m->tc_mt[i] = mt_default[i];
    int v[5];
    if (env_buckets(mt, 5, v))
        for (int i = 0; i < 5; i++)
            if (v[i] == 1 || v[i] == 2 || v[i] == 4) m->tc_mt[i] = v[i];
}

extern "C" Backend *backend_cuda_create(int n_threads, bool one_stream, char *err) {
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
    int v[4];
    if (env_buckets(pers, 4, v)) /* "P" for every bucket or "P1,P2,P4,P8" (0 or 1) */
        for (int i = 0; i < 4; i++) c->mm.persist_b[i] = v[i] == 1;
    const char *chunk = getenv("DSPARK_CUDA_MM_CHUNK"), *multi = getenv("DSPARK_CUDA_MM_MULTI");
    c->mm.chunk4 = chunk && strcmp(chunk, "4") == 0;
    c->mm.multi = !(multi && strcmp(multi, "0") == 0) && !c->mm.ref;
    c->mm.nsm = prop.multiProcessorCount;
    mm_tc_config(&c->mm, one_stream);
    /* BF16 matrices in tiles (read by k_matmul_tc alone: so only with it; DSPARK_CUDA_TILES=0:
     * row-major, as the F32-FMA and reference kernels read them) */
    const char *tiles = getenv("DSPARK_CUDA_TILES");
    c->tiles = c->mm.tc && !c->mm.ref && !(tiles && strcmp(tiles, "0") == 0);
    /* DSPARK_CUDA_PDL=0: kernels launched in plain stream order (default: with programmatic
     * stream serialization, pdl_wait; H200: 4.17 -> 4.09 ms per decode step, 5.34 -> 5.24 at
     * 8 tokens) */
    const char *pdl = getenv("DSPARK_CUDA_PDL");
    c->mm.pdl = !(pdl && strcmp(pdl, "0") == 0);
    if (cudaMalloc(&c->norm_r, sizeof(float) * CUDA_SMALL_N) != cudaSuccess || cudaMalloc(&c->draw_scratch, DRAW_SCRATCH) != cudaSuccess) {
        cudaGetLastError();
        if (c->norm_r) cudaFree(c->norm_r);
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
    if (env_buckets(cols, 4, v)) /* "C" for every bucket or "C1,C2,C4,C8" (2, 4 or 8; benchmarks tune with it) */
        for (int i = 0; i < 4; i++)
            if (v[i] == 2 || v[i] == 4 || v[i] == 8) c->mm.cols[i] = v[i];
    const char *sync = getenv("DSPARK_CUDA_SYNC");
    g_sync_each = sync && strcmp(sync, "1") == 0;
    snprintf(c->info, sizeof c->info, "%.200s (sm_%d%d, %.1f GB, %d SMs), products: own kernel%s", prop.name, prop.major, prop.minor,
             prop.totalGlobalMem / 1e9, prop.multiProcessorCount, c->have_blas ? " <= 64 rows, cuBLAS F32 above" : " (no cuBLAS)");
    if (c->mm.ref) strncat(c->info, ", reference product kernel", sizeof c->info - strlen(c->info) - 1);
    else if (c->mm.tc) {
        char t[160];
        snprintf(t, sizeof t, ", BF16 <= 64 rows: tensor cores, x in %d bf16 piece%s%s", c->mm.tc, c->mm.tc > 1 ? "s" : "",
                 c->tiles ? ", weights in tiles" : "");
        strncat(c->info, t, sizeof c->info - strlen(c->info) - 1);
    }
    if (c->mm.pdl) strncat(c->info, ", programmatic dependent launch", sizeof c->info - strlen(c->info) - 1);
    if (c->mm.np_act) strncat(c->info, ", paired gate/up from norm pieces", sizeof c->info - strlen(c->info) - 1);
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
     * DSPARK_CUDA_FUSE=0 issues the separate ops (test_fused_ops compares the two bitwise),
     * DSPARK_CUDA_FOLD=0 keeps the fusions that change no bit but not the folded norms */
    const char *fuse = getenv("DSPARK_CUDA_FUSE"), *fold = getenv("DSPARK_CUDA_FOLD");
    backend_cuda_set_fused(be, !(fuse && strcmp(fuse, "0") == 0), !(fold && strcmp(fold, "0") == 0));
    be->attention = cu_attention;
    /* DSPARK_CUDA_ATT: 0 one query head per block always, 1 a KV head's query heads wherever
     * that applies, else auto */
    const char *att = getenv("DSPARK_CUDA_ATT");
    c->att_gqa_min = att && !strcmp(att, "0") ? INT_MAX : att && !strcmp(att, "1") ? 1 : 2;
    /* DSPARK_CUDA_ATT_TC=1: the tensor-core kernel where it applies (off by default: slower up to
     * 16 tokens, faster from 64 and at long contexts; docs/bench-cuda.md); DSPARK_CUDA_ATT_TG: its
     * tokens per block (default 16 / its query heads). Neither changes a value across calls. */
    const char *att_tc = getenv("DSPARK_CUDA_ATT_TC"), *att_tg = getenv("DSPARK_CUDA_ATT_TG");
    c->att_tc = att_tc && !strcmp(att_tc, "1") && !(att && (!strcmp(att, "0") || !strcmp(att, "1")));
    c->att_tg = att_tg ? atoi(att_tg) : 0;
    /* DSPARK_CUDA_ATT_R8=1: k_attention_r8 (8 lanes a row; opt-in, not yet timed) for head_dim
     * 32, 64, 128 and 256 where the tensor cores do not run; its own bits, the same across calls */
    const char *att_r8 = getenv("DSPARK_CUDA_ATT_R8");
    c->att_r8 = att_r8 && !strcmp(att_r8, "1");
    /* DSPARK_CUDA_ATT_CHUNK: keys per chunk for every length, 8..1024 in steps of 8 (default
     * 0: by the token's key count, att_chunk_of; changes values within rounding, never across
     * calls of one backend) */
    const char *att_chunk = getenv("DSPARK_CUDA_ATT_CHUNK");
    const int ch = att_chunk ? atoi(att_chunk) : 0;
    c->att_chunk = ch >= 8 && ch <= 1024 && ch % 8 == 0 ? ch : 0;
    /* DSPARK_CUDA_ATT_Z: attention's blocks per (token, head block), 1..ATT_SPLITS (default 0:
     * by the launch's size, cu_attention; no value changes) */
    const char *att_z = getenv("DSPARK_CUDA_ATT_Z");
    const int az = att_z ? atoi(att_z) : 0;
    c->att_z = az >= 1 && az <= ATT_SPLITS ? az : 0;
    const char *att_pf = getenv("DSPARK_CUDA_ATT_PREFETCH");
    c->att_pf = !(att_pf && !strcmp(att_pf, "0"));
    /* (the tensor-core kernel's shared memory passes the 48 KB default from 64 dims on) */
#define ATC(MT) CU(cudaFuncSetAttribute(k_attention_tc<MT>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)atc_smem(16 * MT)));
    ATC_EACH_MT(ATC)
#undef ATC
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
