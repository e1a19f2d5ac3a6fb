/* kernels_amx.c - prefill products of the OPT-IN BF16-activation path on AMX tiles, through
 * oneDNN's matmul primitive (Debian libdnnl-dev 2.6; its "brg:avx512_core_amx_bf16"
 * implementation drives the tiles). Built only where CMake found oneDNN (DSPARK_HAVE_DNNL);
 * elsewhere kern_amx_available() is false and the AVX512_BF16 kernels do everything.
 *
 * The product: src = the activation rows already rounded to BF16 (kernels_bf16_avx512.c's
 * x_to_bf16, row stride ldx), weights = the Weight's BF16 [out][in] rows read IN PLACE as a
 * K x N matrix with strides {1, K} (oneDNN's "ba"), dst = F32 rows of stride ldo. No weight
 * is copied or reordered by default, so the path costs no memory beyond oneDNN's scratchpad:
 * oneDNN packs B blocks itself per call. Its own reordered layout (DSPARK_AMX_REORDER=1, below)
 * measured 5-17% faster per product with the weights in cache (1 thread, M 128, e.g.
 * 1024 x 3072 1.15-1.25 -> 0.96-1.04 ms), and in bench_cpu's prefill (pp128) no faster at 1
 * thread (472, 486 vs 490, 465 tok/s) and ~10% faster at 2 (789, 778 vs 860, 875), for
 * 881 MB more memory and the staleness caveat below; hence opt-in.
 *
 * Threads: Debian's libdnnl is built on OpenMP (libgomp, the runtime our own regions use), so a
 * primitive runs omp_get_max_threads() threads of the same pool; a primitive is created for a
 * thread count and is cached per (M, K, ldx, N, ldo, threads).
 *
 * Numerics: products of BF16 values accumulated in F32 (oneDNN's order, not the vdpbf16ps
 * kernels' 16 lanes), so a row's value differs from the AVX512_BF16 kernels' in the last bits
 * (batches below KERN_AMX_MIN_ROWS, or shapes oneDNN runs without AMX, take those) and, as
 * oneDNN's blocking depends on M and the thread count, is not promised to be bitwise the same
 * for different batch sizes: the AMX path does NOT keep backend.h's row-independence contract
 * (see kernels.h). Measured (test_kernels): every AMX batch of 9..130 rows, 1 or 2 threads,
 * gave rows bitwise equal to the 130-row batch's, and the error bound holds for all. */
#include "kernels.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#if defined(DSPARK_HAVE_DNNL) && defined(__x86_64__)
#include <dnnl_version.h>
#if DNNL_VERSION_MAJOR != 2
#error "kernels_amx.c needs oneDNN 2.x (CMake checks this)"
#endif
#include <cpuid.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <dnnl.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

typedef struct {
    int M, K, ldx, N, ldo, nthr;
    bool reorder;          /* weights in oneDNN's own layout (wmd), from the per-Weight cache */
    dnnl_memory_desc_t wmd;
    bool refused; /* oneDNN offered no AMX kernel for this shape (remembered: asking costs) */
    dnnl_primitive_t prim;
    dnnl_memory_t src, wei, dst;
} AmxPrim;

#define AMX_CACHE 64
static AmxPrim g_cache[AMX_CACHE];
static int g_ncache, g_next_evict;
static dnnl_engine_t g_eng;
static dnnl_stream_t g_stream;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static char g_impl[64];

/* DSPARK_AMX_REORDER=1: each Weight reordered once into the layout the primitive asks for and
 * kept until kern_amx_release (backend destroy): 2 bytes per weight again (~0.9 GB for the
 * Qwen3-0.6B shape's layers), and only sound while the weights stay fixed in memory (the cache
 * is keyed by address and shape: a weight updated in place, or freed and another allocated at
 * its address, would be read stale). Off by default. */
typedef struct {
    const void *host;
    int rows, cols;
    dnnl_memory_desc_t md;
    dnnl_memory_t mem;
} AmxWeight;
static bool g_reorder;
static AmxWeight *g_w;
static int g_nw, g_capw;
static size_t g_wbytes;

/* the reordered copy of w for layout md (g_lock held); NULL on failure */
static dnnl_memory_t weight_get(const Weight *w, const dnnl_memory_desc_t *md) {
    AmxWeight *e = NULL;
    for (int i = 0; i < g_nw; i++)
        if (g_w[i].host == w->host && g_w[i].rows == w->rows && g_w[i].cols == w->cols) { e = &g_w[i]; break; }
    if (e && dnnl_memory_desc_equal(&e->md, md)) return e->mem;
    if (!e) {
        if (g_nw == g_capw) {
            int cap = g_capw ? 2 * g_capw : 256;
            AmxWeight *n = realloc(g_w, sizeof *n * (size_t)cap);
            if (!n) return NULL;
            g_w = n;
            g_capw = cap;
        }
        e = &g_w[g_nw++];
        memset(e, 0, sizeof *e);
        e->host = w->host; e->rows = w->rows; e->cols = w->cols;
    }
    if (e->mem) { dnnl_memory_destroy(e->mem); e->mem = NULL; g_wbytes -= dnnl_memory_desc_get_size(&e->md); }
    dnnl_memory_desc_t plain;
    dnnl_dims_t bd = {w->cols, w->rows}, bs = {1, w->cols};
    dnnl_memory_t src = NULL;
    dnnl_primitive_desc_t rpd = NULL;
    dnnl_primitive_t r = NULL;
    bool ok = dnnl_memory_desc_init_by_strides(&plain, 2, bd, dnnl_bf16, bs) == dnnl_success &&
              dnnl_memory_create(&src, &plain, g_eng, (void *)(uintptr_t)w->host) == dnnl_success &&
              dnnl_memory_create(&e->mem, md, g_eng, DNNL_MEMORY_ALLOCATE) == dnnl_success &&
              dnnl_reorder_primitive_desc_create(&rpd, &plain, g_eng, md, g_eng, NULL) == dnnl_success &&
              dnnl_primitive_create(&r, rpd) == dnnl_success;
    if (ok) {
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, e->mem}};
        ok = dnnl_primitive_execute(r, g_stream, 2, args) == dnnl_success && dnnl_stream_wait(g_stream) == dnnl_success;
    }
    if (r) dnnl_primitive_destroy(r);
    if (rpd) dnnl_primitive_desc_destroy(rpd);
    if (src) dnnl_memory_destroy(src);
    if (!ok) {
        if (e->mem) dnnl_memory_destroy(e->mem);
        e->mem = NULL;
        e->host = NULL; /* never matches again */
        return NULL;
    }
    e->md = *md;
    g_wbytes += dnnl_memory_desc_get_size(md);
    return e->mem;
}

static void prim_free(AmxPrim *p) {
    if (p->prim) dnnl_primitive_destroy(p->prim);
    if (p->src) dnnl_memory_destroy(p->src);
    if (p->wei) dnnl_memory_destroy(p->wei);
    if (p->dst) dnnl_memory_destroy(p->dst);
    memset(p, 0, sizeof *p);
}

/* the primitive for this shape (g_lock held); NULL when oneDNN refuses it */
static AmxPrim *prim_get(int M, int K, int ldx, int N, int ldo) {
    const int nthr = omp_get_max_threads();
    for (int i = 0; i < g_ncache; i++) {
        AmxPrim *p = &g_cache[i];
        if (p->M == M && p->K == K && p->ldx == ldx && p->N == N && p->ldo == ldo && p->nthr == nthr && p->reorder == g_reorder)
            return p->refused ? NULL : p;
    }
    AmxPrim *p;
    if (g_ncache < AMX_CACHE) p = &g_cache[g_ncache++];
    else {
        p = &g_cache[g_next_evict];
        g_next_evict = (g_next_evict + 1) % AMX_CACHE;
        prim_free(p);
    }
    dnnl_memory_desc_t a, b, c;
    dnnl_dims_t ad = {M, K}, as = {ldx, 1}, bd = {K, N}, bs = {1, K}, cd = {M, N}, cs = {ldo, 1};
    dnnl_matmul_desc_t md;
    dnnl_primitive_desc_t pd = NULL;
    bool ok = dnnl_memory_desc_init_by_strides(&a, 2, ad, dnnl_bf16, as) == dnnl_success &&
              (g_reorder ? dnnl_memory_desc_init_by_tag(&b, 2, bd, dnnl_bf16, dnnl_format_tag_any)
                         : dnnl_memory_desc_init_by_strides(&b, 2, bd, dnnl_bf16, bs)) == dnnl_success &&
              dnnl_memory_desc_init_by_strides(&c, 2, cd, dnnl_f32, cs) == dnnl_success &&
              dnnl_matmul_desc_init(&md, &a, &b, NULL, &c) == dnnl_success &&
              dnnl_primitive_desc_create(&pd, &md, NULL, g_eng, NULL) == dnnl_success;
    const char *impl = NULL;
    /* only an AMX implementation: anything else is what the AVX512_BF16 kernels already do */
    ok = ok && dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl && strstr(impl, "amx");
    if (ok) snprintf(g_impl, sizeof g_impl, "%s", impl);
    const dnnl_memory_desc_t *wmd = ok ? dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0) : NULL;
    ok = ok && wmd;
    if (ok) p->wmd = *wmd;
    ok = ok && dnnl_primitive_create(&p->prim, pd) == dnnl_success &&
         dnnl_memory_create(&p->src, &a, g_eng, DNNL_MEMORY_NONE) == dnnl_success &&
         (g_reorder || dnnl_memory_create(&p->wei, &b, g_eng, DNNL_MEMORY_NONE) == dnnl_success) &&
         dnnl_memory_create(&p->dst, &c, g_eng, DNNL_MEMORY_NONE) == dnnl_success;
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (!ok) prim_free(p);
    p->M = M; p->K = K; p->ldx = ldx; p->N = N; p->ldo = ldo; p->nthr = nthr;
    p->refused = !ok;
    p->reorder = g_reorder;
    return ok ? p : NULL;
}

static long g_products;

static void amx_release_locked(void) {
    for (int i = 0; i < g_ncache; i++) prim_free(&g_cache[i]);
    g_ncache = g_next_evict = 0;
    for (int i = 0; i < g_nw; i++)
        if (g_w[i].mem) dnnl_memory_destroy(g_w[i].mem);
    free(g_w);
    g_w = NULL;
    g_nw = g_capw = 0;
    g_wbytes = 0;
}

/* cpuid AMX-BF16 and AMX-TILE, the OS's permission for the tile data state (Linux 5.16+:
 * arch_prctl ARCH_REQ_XCOMP_PERM), and a oneDNN engine whose matmul picks an AMX kernel */
static bool amx_probe(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!(d & (1u << 22)) || !(d & (1u << 24))) return false;
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) return false;
    const char *ro = getenv("DSPARK_AMX_REORDER");
    g_reorder = ro && strcmp(ro, "1") == 0;
    if (dnnl_engine_create(&g_eng, dnnl_cpu, 0) != dnnl_success) return false;
    if (dnnl_stream_create(&g_stream, g_eng, dnnl_stream_default_flags) != dnnl_success) return false;
    pthread_mutex_lock(&g_lock);
    bool ok = prim_get(32, 64, 64, 32, 32) != NULL;
    amx_release_locked();
    pthread_mutex_unlock(&g_lock);
    return ok;
}

static bool g_amx_ok;
static pthread_once_t g_probe_once = PTHREAD_ONCE_INIT;
static void probe_once(void) { g_amx_ok = amx_probe(); }

bool kern_amx_available(void) {
    pthread_once(&g_probe_once, probe_once);
    return g_amx_ok;
}

const char *kern_amx_impl(void) { return g_impl; }
long kern_amx_products(void) { return g_products; }
size_t kern_amx_weight_bytes(void) { return g_wbytes; }
void kern_amx_set_reorder(bool on) {
    pthread_mutex_lock(&g_lock);
    g_reorder = on; /* primitives are keyed by it; the weight cache stays until kern_amx_release */
    pthread_mutex_unlock(&g_lock);
}

bool kern_matmul_amx(float *out, int ldo, const uint16_t *xb, int ldx, const Weight *w, int n) {
    if (!kern_amx_available() || w->dtype != DS_BF16) return false;
    pthread_mutex_lock(&g_lock);
    AmxPrim *p = prim_get(n, w->cols, ldx, w->rows, ldo);
    dnnl_memory_t wei = !p ? NULL : p->reorder ? weight_get(w, &p->wmd) : p->wei;
    bool ok = wei && dnnl_memory_set_data_handle(p->src, (void *)(uintptr_t)xb) == dnnl_success &&
              (p->reorder || dnnl_memory_set_data_handle(p->wei, (void *)(uintptr_t)w->host) == dnnl_success) &&
              dnnl_memory_set_data_handle(p->dst, out) == dnnl_success;
    if (ok) {
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, p->src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, p->dst}};
        ok = dnnl_primitive_execute(p->prim, g_stream, 3, args) == dnnl_success && dnnl_stream_wait(g_stream) == dnnl_success;
        g_products += ok;
    }
    pthread_mutex_unlock(&g_lock);
    return ok;
}

void kern_amx_release(void) {
    pthread_mutex_lock(&g_lock);
    amx_release_locked();
    pthread_mutex_unlock(&g_lock);
}

#else /* no oneDNN (or not x86-64): the AVX512_BF16 kernels do all products */

bool kern_amx_available(void) { return false; }
const char *kern_amx_impl(void) { return ""; }
long kern_amx_products(void) { return 0; }
size_t kern_amx_weight_bytes(void) { return 0; }
void kern_amx_set_reorder(bool on) { (void)on; }
bool kern_matmul_amx(float *out, int ldo, const uint16_t *xb, int ldx, const Weight *w, int n) {
    (void)out; (void)ldo; (void)xb; (void)ldx; (void)w; (void)n;
    return false;
}
void kern_amx_release(void) {}

#endif
