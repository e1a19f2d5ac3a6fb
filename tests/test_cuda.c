/* test_cuda.c - the CUDA backend against the CPU backend (issue 7), on the GPU machine.
 *
 * Measure: normalised squared error nse = sum (gpu - cpu)^2 / sum cpu^2. Both backends widen
 * BF16/F16 weights to F32 exactly and accumulate in F32 (the GPU's tensor-core product for
 * BF16: exact products of x's 3 bf16 pieces, F32 accumulation), so the bound is float32
 * rounding for every weight dtype: nse <= 1e-7 (observed values are printed). Copies (embed,
 * gather, kv_write, add, ew mul) must be bitwise equal. Must-fail: the same product with the
 * weights rounded to BF16 on one side only, and the tensor-core product with x in one bf16
 * piece (x rounded to bf16), are caught by that bound.
 *   - every op on random data, several shapes (scalar and vector matmul paths, cuBLAS above
 *     CUDA_SMALL_N rows), and on the GPU a row's result is bitwise the same alone or in a batch;
 *   - the tensor-core product: every n 1..64 bitwise the rows of the 64-row product, every
 *     launch setting too (test_matmul_tc);
 *   - the tiny-qwen3 target forward (F32 and BF16 checkpoints): logits and layer features,
 *     and incremental decoding on the GPU bitwise equal to the one-shot forward (both);
 *   - the fixture drafters and the trained drafter: hidden, base logits, per-slot logits and
 *     confidences;
 *   - greedy speculative decoding on the GPU gives exactly the CPU's plain greedy tokens.
 * Without a GPU it prints why and exits 77 (ctest SKIP); DSPARK_REQUIRE_CUDA=1 makes that a failure.
 * DSPARK_TEST_ONLY=test_a,test_b runs only those (a short compute-sanitizer run).
 * ctest: labels=cuda timeout=600 */
#include "spec.h"
#include "test.h"
#ifdef DSPARK_HAVE_CUDA
#include "cuda/backend_cuda.h"
#endif

#define NSE_F32 1e-7

static Backend *g_cpu, *g_gpu;
/* CUDA builds: g_rows (DSPARK_CUDA_TILES=0) uploads gpu_weight's weights row-major, as every
 * product kernel reads them (g_gpu keeps BF16 matrices in tiles, read by k_matmul_tc alone:
 * gpu_weight_tiled); g_noblas (DSPARK_CUDA_CUBLAS=0) has no cuBLAS for products above 64 rows */
static Backend *g_rows, *g_noblas;
static Rng g_rng;

static double nse(const float *got, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    if (isnan(num)) return INFINITY;
    return den > 0 ? num / den : num;
}

static double g_worst_nse;
#define CHECK_NSE(name, got, ref, n, bound) do { \
    double _e = nse(got, ref, n); \
    if (_e > g_worst_nse && _e <= (bound)) g_worst_nse = _e; \
    CHECK_MSG(_e <= (bound), "%s: nse %.3g > %.1g", name, _e, (double)(bound)); \
    if (getenv("DSPARK_TEST_VERBOSE")) printf("  %-40s nse %.3g\n", name, _e); \
} while (0)

static float randn(void) {
    double u1 = rng_uniform(&g_rng), u2 = rng_uniform(&g_rng);
    return (float)(sqrt(-2.0 * log(u1 + 1e-300)) * cos(6.283185307179586 * u2));
}
static float *rand_f32(size_t n, float scale) {
    float *x = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) x[i] = scale * randn();
    return x;
}
/* host weight data of dtype dt from F32 values */
static void *to_dtype(const float *x, size_t n, ds_dtype dt) {
    if (dt == DS_F32) {
        float *p = malloc(sizeof(float) * n);
        memcpy(p, x, sizeof(float) * n);
        return p;
    }
    uint16_t *p = malloc(sizeof(uint16_t) * n);
    for (size_t i = 0; i < n; i++) p[i] = dt == DS_BF16 ? ds_f32_to_bf16(x[i]) : ds_f32_to_f16(x[i]);
    return p;
}

/* ---- GPU buffers ---- */
static void *dev_from(const void *host, size_t bytes) {
    void *p = g_gpu->alloc(g_gpu, bytes);
    DS_ASSERT(p);
    g_gpu->to_device(g_gpu, p, host, bytes);
    return p;
}
static float *host_from(const void *dev, size_t n) {
    float *p = malloc(sizeof(float) * (n ? n : 1));
    g_gpu->to_host(g_gpu, p, dev, sizeof(float) * n);
    return p;
}
static Weight upload_on(Backend *be, const Weight *cw) {
    char err[DS_ERR_LEN];
    Weight w = *cw;
    CHECK_OK(be->upload_weight(be, &w, err), err);
    return w;
}
static Weight gpu_weight(const Weight *cw) { return upload_on(g_rows ? g_rows : g_gpu, cw); }
static Weight gpu_weight_tiled(const Weight *cw) { return upload_on(g_gpu, cw); }

/* ---- ops ---- */

static void matmul_case(ds_dtype dt, int K, int O, int n, int x_offset) {
    char name[96];
    snprintf(name, sizeof name, "matmul %s K %d O %d n %d%s", ds_dtype_name(dt), K, O, n, x_offset ? " (unaligned x)" : "");
    float *wf = rand_f32((size_t)O * K, 1.0f / sqrtf((float)K)), *x = rand_f32((size_t)n * K + x_offset, 1.0f);
    void *wh = to_dtype(wf, (size_t)O * K, dt);
    Weight cw = weight_view(wh, dt, O, K), gw = gpu_weight(&cw);
    float *ref = malloc(sizeof(float) * (size_t)n * O);
    g_cpu->matmul(g_cpu, ref, x + x_offset, &cw, n);
    float *dx = dev_from(x, sizeof(float) * ((size_t)n * K + x_offset)), *dout = g_gpu->alloc(g_gpu, sizeof(float) * (size_t)n * O);
    g_gpu->matmul(g_gpu, dout, dx + x_offset, &gw, n);
    float *got = host_from(dout, (size_t)n * O);
    CHECK_NSE(name, got, ref, (size_t)n * O, NSE_F32);
    /* the batch contract: row r alone is bitwise row r of the batch (up to CUDA_SMALL_N rows) */
    if (n > 1 && n <= 64) {
        int r = n / 2;
        g_gpu->matmul(g_gpu, dout, dx + x_offset + (size_t)r * K, &gw, 1);
        float *one = host_from(dout, (size_t)O);
        CHECK_MSG(memcmp(one, got + (size_t)r * O, sizeof(float) * O) == 0, "%s: row %d alone differs from the batch", name, r);
        free(one);
    }
    /* the same weight in g_gpu's tiles: bitwise the row-major product (the same k_matmul_tc
     * arithmetic, or the same widened values for cuBLAS), except where x is not 16-byte aligned
     * (the row-major weight takes the F32-FMA kernel, the tiled one k_matmul_tc after a copy) */
    Weight gt = gpu_weight_tiled(&cw);
    if (dt == DS_BF16) {
        CHECK_MSG(gt.dev_layout != 0 || K % 32 || O < 16, "%s: a BF16 matrix of K %% 32 == 0 not tiled", name);
        g_gpu->matmul(g_gpu, dout, dx + x_offset, &gt, n);
        float *tl = host_from(dout, (size_t)n * O);
        char tn[128];
        snprintf(tn, sizeof tn, "%s, tiled weight", name);
        if (x_offset) CHECK_NSE(tn, tl, ref, (size_t)n * O, NSE_F32);
        else CHECK_MSG(memcmp(tl, got, sizeof(float) * (size_t)n * O) == 0, "%s: not bitwise the row-major weight's product", tn);
        free(tl);
    }
    /* no cuBLAS above 64 rows: the product's own launches of up to 64 rows, each bitwise g_gpu's
     * product of the same rows (row-major and tiled weights) */
    if (n > 64 && g_noblas) {
        const Weight *ws[2] = {&gw, &gt};
        for (int t = 0; t < 2; t++) {
            char nb[128];
            snprintf(nb, sizeof nb, "%s, no cuBLAS%s", name, t ? ", tiled weight" : "");
            g_noblas->matmul(g_noblas, dout, dx + x_offset, ws[t], n);
            g_noblas->synchronize(g_noblas); /* (its own stream: host_from waits for g_gpu's) */
            float *all = host_from(dout, (size_t)n * O);
            CHECK_NSE(nb, all, ref, (size_t)n * O, NSE_F32);
            for (int i0 = 0; i0 < n; i0 += 64) {
                const int nc = n - i0 < 64 ? n - i0 : 64;
                g_gpu->matmul(g_gpu, dout, dx + x_offset + (size_t)i0 * K, ws[t], nc);
                float *part = host_from(dout, (size_t)nc * O);
                CHECK_MSG(memcmp(part, all + (size_t)i0 * O, sizeof(float) * (size_t)nc * O) == 0, "%s: rows %d..%d not bitwise the %d-row product",
                          nb, i0, i0 + nc - 1, nc);
                free(part);
            }
            free(all);
        }
    }
    g_gpu->release_weight(g_gpu, &gt);
    /* must fail: the same product with the weights rounded to BF16 on the GPU side only */
    if (dt == DS_F32 && n == 17) {
        void *wb = to_dtype(wf, (size_t)O * K, DS_BF16);
        Weight cb = weight_view(wb, DS_BF16, O, K), gb = gpu_weight(&cb);
        g_gpu->matmul(g_gpu, dout, dx + x_offset, &gb, n);
        float *lossy = host_from(dout, (size_t)n * O);
        double e = nse(lossy, ref, (size_t)n * O);
        CHECK_MSG(e > NSE_F32, "bf16-rounded weights not caught: nse %.3g", e);
        printf("  must fail: %s with BF16-rounded weights: nse %.3g > %.0e\n", name, e, NSE_F32);
        g_gpu->release_weight(g_gpu, &gb);
        free(lossy);
        free(wb);
    }
    g_gpu->release_weight(g_gpu, &gw);
    g_gpu->free(g_gpu, dx);
    g_gpu->free(g_gpu, dout);
    free(wf); free(x); free(wh); free(ref); free(got);
}

static void test_matmul(void) {
    const ds_dtype dts[] = {DS_F32, DS_BF16, DS_F16};
    const int shapes[][2] = {{64, 160}, {160, 64}, {72, 33}, {67, 50}, {512, 1000}, {2560, 384}};
    const int ns[] = {1, 3, 17, 33, 64, 65, 200};
    for (int d = 0; d < 3; d++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) matmul_case(dts[d], shapes[s][0], shapes[s][1], ns[i], 0);
    matmul_case(DS_BF16, 64, 160, 5, 1); /* x not 16-byte aligned: the scalar path */
    matmul_case(DS_F32, 256, 96, 70, 1);
}

#ifdef DSPARK_HAVE_CUDA
/* a second GPU backend (batched, or one_stream: backend.h's BackendUse) made with env var
 * `name` set to `value` unless NULL (and name2 to value2 unless NULL; then unset again) */
/* an environment variable set for a backend's create only: its old value (or none) back after */
typedef struct {
    const char *name;
    char *old; /* strdup'd, or NULL: unset */
} EnvSave;
static void env_push(EnvSave *e, const char *name, const char *value) {
    const char *o = getenv(name);
    e->name = name;
    e->old = o ? strdup(o) : NULL;
    setenv(name, value, 1);
}
static void env_pop(EnvSave *e) {
    if (e->old) setenv(e->name, e->old, 1);
    else unsetenv(e->name);
    free(e->old);
}

static Backend *gpu_with_env_for(bool one_stream, const char *name, const char *value, const char *name2, const char *value2) {
    char err[DS_ERR_LEN];
    EnvSave e1 = {0}, e2 = {0};
    if (name) env_push(&e1, name, value);
    if (name2) env_push(&e2, name2, value2);
    Backend *be = backend_cuda_create(1, one_stream, err);
    if (name2) env_pop(&e2);
    if (name) env_pop(&e1);
    CHECK_MSG(be != NULL, "%s", err);
    return be;
}
static Backend *gpu_with_env(const char *name, const char *value, const char *name2, const char *value2) {
    return gpu_with_env_for(false, name, value, name2, value2);
}

/* a second GPU backend made with the environment `spec` ("NAME=VALUE NAME=VALUE ...", each
 * set for the create only) */
static Backend *gpu_with_envs(const char *spec) {
    char buf[512], err[DS_ERR_LEN];
    EnvSave saved[8];
    int k = 0;
    snprintf(buf, sizeof buf, "%s", spec);
    for (char *tok = strtok(buf, " "); tok && k < 8; tok = strtok(NULL, " ")) {
        char *eq = strchr(tok, '=');
        if (!eq) continue;
        *eq = 0;
        env_push(&saved[k++], tok, eq + 1);
    }
    Backend *be = backend_cuda_create(1, false, err);
    while (k > 0) env_pop(&saved[--k]);
    CHECK_MSG(be != NULL, "%s: %s", spec, err);
    return be;
}

/* the product kernels are bitwise the previous one (k_matmul_ref, DSPARK_CUDA_MATMUL_REF=1)
 * for every row count up to CUDA_SMALL_N, every dtype, both paths, and every launch setting
 * (DSPARK_CUDA_MM_COLS, _PERSIST, _CHUNK): the arithmetic of a (row, column) is unchanged */
static void test_matmul_vs_reference(void) {
    enum { NB = 7 };
    setenv("DSPARK_CUDA_MM_TC", "0", 1); /* the F32-FMA kernel for BF16 too (test_matmul_tc: the other) */
    Backend *bes[NB] = {gpu_with_env("DSPARK_CUDA_MATMUL_REF", "1", NULL, NULL), gpu_with_env("DSPARK_CUDA_MM_MULTI", "1", NULL, NULL),
                        gpu_with_env("DSPARK_CUDA_MM_COLS", "2", "DSPARK_CUDA_MM_PERSIST", "0"),
                        gpu_with_env("DSPARK_CUDA_MM_COLS", "4,2,8,8", "DSPARK_CUDA_MM_PERSIST", "0"),
                        gpu_with_env("DSPARK_CUDA_MM_PERSIST", "1", NULL, NULL),
                        gpu_with_env("DSPARK_CUDA_MM_PERSIST", "1", "DSPARK_CUDA_MM_COLS", "2,4,2,8"),
                        gpu_with_env("DSPARK_CUDA_MM_CHUNK", "4", "DSPARK_CUDA_MM_COLS", "8")};
    unsetenv("DSPARK_CUDA_MM_TC");
    for (int b = 0; b < NB; b++)
        if (!bes[b]) return;
    const ds_dtype dts[] = {DS_F32, DS_BF16, DS_F16};
    const int shapes[][2] = {{2560, 67}, {9728, 40}, {64, 160}, {72, 33}, {4096, 24}, {1000, 9}};
    const int ns[] = {1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 32, 33, 40, 63, 64};
    int cases = 0, bad = 0;
    for (int d = 0; d < 3; d++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int off = 0; off < 2; off++) {
                const int K = shapes[s][0], O = shapes[s][1], nmax = 64;
                float *wf = rand_f32((size_t)O * K, 1.0f / sqrtf((float)K)), *x = rand_f32((size_t)nmax * K + off, 1.0f);
                void *wh = to_dtype(wf, (size_t)O * K, dts[d]);
                Weight cw = weight_view(wh, dts[d], O, K), gw = gpu_weight(&cw);
                float *dx = dev_from(x, sizeof(float) * ((size_t)nmax * K + off)), *dout = g_gpu->alloc(g_gpu, sizeof(float) * (size_t)nmax * O);
                float *ref = malloc(sizeof(float) * (size_t)nmax * O), *got = malloc(sizeof(float) * (size_t)nmax * O);
                g_gpu->synchronize(g_gpu); /* the other backends' streams do not wait for g_gpu's uploads */
                for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
                    const int n = ns[i];
                    for (int b = 0; b < NB; b++) {
                        bes[b]->matmul(bes[b], dout, dx + off, &gw, n);
                        bes[b]->synchronize(bes[b]);
                        g_gpu->to_host(g_gpu, b ? got : ref, dout, sizeof(float) * (size_t)n * O);
                        if (b) {
                            cases++;
                            if (memcmp(got, ref, sizeof(float) * (size_t)n * O) != 0) {
                                if (bad++ < 5)
                                    CHECK_MSG(0, "matmul %s K %d O %d n %d%s backend %d: not bitwise the reference kernel", ds_dtype_name(dts[d]), K, O, n,
                                              off ? " (unaligned x)" : "", b);
                            }
                        }
                    }
                }
                g_gpu->release_weight(g_gpu, &gw);
                g_gpu->free(g_gpu, dx);
                g_gpu->free(g_gpu, dout);
                free(wf); free(x); free(wh); free(ref); free(got);
            }
    CHECK_MSG(bad == 0, "%d of %d products differ from the reference kernel", bad, cases);
    printf("  matmul vs the reference kernel: %d of %d products bitwise equal\n", cases - bad, cases);
    for (int b = 0; b < NB; b++)
        if (bes[b] != g_gpu) bes[b]->destroy(bes[b]);
}

/* The tensor-core product for BF16 weights (K % 32 == 0, x and w 16-byte aligned), k_matmul_tc:
 *   - against the CPU's F32 product: nse <= NSE_F32 with x in 3 bf16 pieces (printed, with the
 *     F32-FMA kernel's nse beside it); 2 pieces printed; must fail: 1 piece (x rounded to bf16)
 *     exceeds the bound;
 *   - every n = 1..64: each row bitwise the same row of the default's 64-row product (the
 *     arithmetic of a row does not depend on n), for every launch setting (DSPARK_CUDA_TC_MT,
 *     _DEEP, _PREFETCH, PDL off);
 *   - K not a multiple of 32 and unaligned x fall back to the F32-FMA kernel (checked bitwise). */
static void test_matmul_tc(void) {
    /* (k_matmul_tc's settings for the products it still makes, k_matmul_col's for the plain ones) */
    static const char *const settings[] = {NULL, "DSPARK_CUDA_TC_MT=2 DSPARK_CUDA_TC_DEEP=1 DSPARK_CUDA_PDL=0 DSPARK_CUDA_COL_MT=2 DSPARK_CUDA_COL_U=4,2,4,2",
                                           "DSPARK_CUDA_TC_MT=4 DSPARK_CUDA_TC_PREFETCH=4 DSPARK_CUDA_COL_MT=1 DSPARK_CUDA_COL_CHUNK=16,3,4,8,2",
                                           "DSPARK_CUDA_TC_MT=1,4,2,4,2 DSPARK_CUDA_TC_DEEP=2 DSPARK_CUDA_COL_MT=2,2,1,1,1 DSPARK_CUDA_COL_U=4,2,4,1"};
    enum { NM = 4 };
    Backend *bes[NM];
    for (int m = 0; m < NM; m++) {
        bes[m] = m == 0 ? g_gpu : gpu_with_envs(settings[m]); /* g_gpu: the default */
        if (!bes[m]) return;
    }
    Backend *fma = gpu_with_env("DSPARK_CUDA_MM_TC", "0", NULL, NULL);
    Backend *p2 = gpu_with_env("DSPARK_CUDA_MM_TC", "2", NULL, NULL), *p1 = gpu_with_env("DSPARK_CUDA_MM_TC", "1", NULL, NULL);
    if (!p1 || !p2 || !fma) return;
    /* (K, O, x offset in floats): odd O (partial tiles), K from 1 k-step per warp to 400, an
     * lm_head-sized O; the last two fall back (K % 32 != 0; x not 16-byte aligned) */
    const int shapes[][3] = {{2560, 67, 0}, {4096, 40, 0}, {9728, 24, 0}, {12800, 20, 0}, {8224, 18, 0}, {2592, 20, 0}, {160, 33, 0},
                             {32, 17, 0}, {96, 1000, 0}, {32, 65541, 0}, {200, 50, 0}, {2560, 30, 1}};
    const int nsh = (int)(sizeof shapes / sizeof shapes[0]), nmax = 64;
    int bad_rows = 0, cases = 0;
    double worst3 = 0, worst2 = 0, worst_fma = 0, best1 = INFINITY;
    for (int s = 0; s < nsh; s++) {
        const int K = shapes[s][0], O = shapes[s][1], off = shapes[s][2];
        const bool tc = K % 32 == 0 && off == 0;
        float *wf = rand_f32((size_t)O * K, 1.0f / sqrtf((float)K)), *x = rand_f32((size_t)nmax * K + off, 1.0f);
        void *wh = to_dtype(wf, (size_t)O * K, DS_BF16);
        Weight cw = weight_view(wh, DS_BF16, O, K), gw = gpu_weight(&cw), gt = gpu_weight_tiled(&cw);
        float *ref = malloc(sizeof(float) * (size_t)nmax * O), *got = malloc(sizeof(float) * (size_t)nmax * O);
        float *all = malloc(sizeof(float) * (size_t)nmax * O);
        g_cpu->matmul(g_cpu, ref, x + off, &cw, nmax);
        float *dx = dev_from(x, sizeof(float) * ((size_t)nmax * K + off)), *dout = g_gpu->alloc(g_gpu, sizeof(float) * (size_t)nmax * O);
        g_gpu->synchronize(g_gpu);
        char name[96];
        /* 64 rows: the default, 2 pieces, 1 piece, the F32-FMA kernel, against the CPU */
        Backend *acc[4] = {g_gpu, p2, p1, fma};
        double e[4];
        for (int a = 0; a < 4; a++) {
            acc[a]->matmul(acc[a], dout, dx + off, &gw, nmax);
            acc[a]->synchronize(acc[a]);
            float *dst = a == 0 ? all : got;
            g_gpu->to_host(g_gpu, dst, dout, sizeof(float) * (size_t)nmax * O);
            e[a] = nse(dst, ref, (size_t)nmax * O);
        }
        snprintf(name, sizeof name, "matmul tc BF16 K %d O %d n 64%s", K, O, tc ? "" : " (falls back)");
        CHECK_NSE(name, all, ref, (size_t)nmax * O, NSE_F32);
        printf("  %-44s nse k_matmul_tc %.3g, 2 pieces %.3g, 1 piece %.3g, F32-FMA kernel %.3g\n", name, e[0], e[1], e[2], e[3]);
        if (tc) {
            worst3 = e[0] > worst3 ? e[0] : worst3;
            worst2 = e[1] > worst2 ? e[1] : worst2;
            worst_fma = e[3] > worst_fma ? e[3] : worst_fma;
            best1 = e[2] < best1 ? e[2] : best1;
            CHECK_MSG(e[2] > NSE_F32, "%s: x rounded to bf16 (1 piece) not caught: nse %.3g", name, e[2]);
        } else {
            CHECK_MSG(e[0] == e[2] && e[0] == e[3], "%s: the fallback should not depend on the kernel settings", name);
        }
        /* every n, every setting, the row-major and (where x is aligned) the tiled weight:
         * bitwise the rows of the default's 64-row product */
        for (int n = 1; n <= nmax; n++)
            for (int m = 0; m < NM; m++)
                for (int t = 0; t < (off ? 1 : 2); t++) {
                    Backend *be = bes[m];
                    be->matmul(be, dout, dx + off, t ? &gt : &gw, n);
                    be->synchronize(be);
                    g_gpu->to_host(g_gpu, got, dout, sizeof(float) * (size_t)n * O);
                    cases++;
                    if (memcmp(got, all, sizeof(float) * (size_t)n * O) != 0) {
                        if (bad_rows++ < 5)
                            CHECK_MSG(0, "%s: n %d (setting '%s'%s) not bitwise the rows of n 64", name, n, settings[m] ? settings[m] : "default",
                                      t ? ", tiled weight" : "");
                    }
                }
        g_gpu->release_weight(g_gpu, &gw);
        g_gpu->release_weight(g_gpu, &gt);
        g_gpu->free(g_gpu, dx);
        g_gpu->free(g_gpu, dout);
        free(wf); free(x); free(wh); free(ref); free(got); free(all);
    }
    CHECK_MSG(bad_rows == 0, "tensor-core products: %d of %d products not bitwise the 64-row rows", bad_rows, cases);
    printf("  tensor-core products: %d of %d products (n 1..64, %d settings) bitwise their 64-row rows; worst nse k_matmul_tc %.3g, "
           "2 pieces %.3g, F32-FMA kernel %.3g; 1 piece at least %.3g (must fail)\n",
           cases - bad_rows, cases, NM, worst3, worst2, worst_fma, best1);
    for (int m = 1; m < NM; m++) bes[m]->destroy(bes[m]);
    fma->destroy(fma);
    p1->destroy(p1);
    p2->destroy(p2);
}
#endif

/* matmul_multi (when the backend has it) is bitwise the separate products (and swiglu), on
 * be (buffers made on g_gpu) */
static void matmul_multi_on(Backend *be, const char *what) {
    if (!be->matmul_multi) {
        printf("  %s: no matmul_multi\n", what);
        return;
    }
    const ds_dtype dts[] = {DS_BF16, DS_F32};
    /* K 320 and 4352 (beyond 4096) */
    const int Os[3] = {256, 64, 72}, ns[] = {1, 2, 3, 8, 17, 64, 70};
    int bad = 0, cases = 0;
    for (int dk = 0; dk < 4; dk++) {
        const int d = dk % 2, K = dk < 2 ? 320 : 4352;
        Weight gw[3];
        void *wh[3];
        for (int j = 0; j < 3; j++) {
            float *wf = rand_f32((size_t)Os[j] * K, 1.0f / sqrtf((float)K));
            wh[j] = to_dtype(wf, (size_t)Os[j] * K, dts[d]);
            Weight cw = weight_view(wh[j], dts[d], Os[j], K);
            gw[j] = gpu_weight(&cw);
            free(wf);
        }
        float *x = rand_f32((size_t)70 * K, 1.0f), *dx = dev_from(x, sizeof(float) * 70 * K);
        float *sep[3], *mul[3], *up = g_gpu->alloc(g_gpu, sizeof(float) * 70 * Os[0]), *up2 = g_gpu->alloc(g_gpu, sizeof(float) * 70 * Os[0]);
        for (int j = 0; j < 3; j++) {
            sep[j] = g_gpu->alloc(g_gpu, sizeof(float) * 70 * Os[j]);
            mul[j] = g_gpu->alloc(g_gpu, sizeof(float) * 70 * Os[j]);
        }
        g_gpu->synchronize(g_gpu);
        for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
            const int n = ns[i];
            const Weight *ws3[3] = {&gw[0], &gw[1], &gw[2]};
            for (int j = 0; j < 3; j++) be->matmul(be, sep[j], dx, &gw[j], n);
            be->matmul_multi(be, mul, dx, ws3, 3, n, 0);
            be->synchronize(be);
            for (int j = 0; j < 3; j++) {
                float *a = host_from(sep[j], (size_t)n * Os[j]), *b = host_from(mul[j], (size_t)n * Os[j]);
                cases++;
                bad += memcmp(a, b, sizeof(float) * (size_t)n * Os[j]) != 0;
                free(a); free(b);
            }
            /* gate/up with swiglu: the same weight twice is enough for the values (O 256, and
             * 72: a part tile) */
            for (int p = 0; p < 3; p += 2) {
                const Weight *wp[2] = {&gw[p], &gw[p]};
                be->matmul(be, sep[0], dx, &gw[p], n);
                be->matmul(be, up, dx, &gw[p], n);
                be->swiglu(be, sep[0], sep[0], up, (size_t)n * Os[p]);
                float *outs2[2] = {mul[0], up2};
                be->matmul_multi(be, outs2, dx, wp, 2, n, 1);
                be->synchronize(be);
                float *a = host_from(sep[0], (size_t)n * Os[p]), *b = host_from(mul[0], (size_t)n * Os[p]);
                cases++;
                bad += memcmp(a, b, sizeof(float) * (size_t)n * Os[p]) != 0;
                free(a); free(b);
            }
        }
        for (int j = 0; j < 3; j++) {
            g_gpu->release_weight(g_gpu, &gw[j]);
            g_gpu->free(g_gpu, sep[j]);
            g_gpu->free(g_gpu, mul[j]);
            free(wh[j]);
        }
        g_gpu->free(g_gpu, dx);
        g_gpu->free(g_gpu, up);
        g_gpu->free(g_gpu, up2);
        free(x);
    }
    CHECK_MSG(bad == 0, "matmul_multi (%s): %d of %d outputs differ from the separate products", what, bad, cases);
    printf("  matmul_multi (%s): %d of %d outputs bitwise the separate products\n", what, cases - bad, cases);
}

static void test_matmul_multi(void) {
    matmul_multi_on(g_gpu, "default");
#ifdef DSPARK_HAVE_CUDA
    const char *env[][2] = {{"DSPARK_CUDA_MM_PERSIST", "1"}, {"DSPARK_CUDA_MM_PERSIST", "0"}, {"DSPARK_CUDA_PDL", "0"}, {"DSPARK_CUDA_MM_TC", "0"}};
    for (int e = 0; e < 4; e++) {
        Backend *be = gpu_with_env(env[e][0], env[e][1], NULL, NULL);
        if (!be) continue;
        char what[64];
        snprintf(what, sizeof what, "%s=%s", env[e][0], env[e][1]);
        matmul_multi_on(be, what);
        be->destroy(be);
    }
#endif
}

/* matmul_norm and matmul_add (the products with the rmsnorm before and the residual add
 * after folded in) against the CPU's rmsnorm then matmul (and swiglu), for BF16 weights (the
 * fold) and F32 ones and an unaligned x (the separate ops): nse <= NSE_F32; a row alone is
 * bitwise its row of the batch; matmul_add is bitwise matmul then add. Must fail: the fold
 * with another eps, on rows small enough for eps to matter. */
static void test_matmul_fold(void) {
    if (!g_gpu->matmul_norm || !g_gpu->matmul_add) {
        printf("  no matmul_norm / matmul_add\n");
        return;
    }
    const float eps = 1e-6f;
    const int Os[3] = {256, 64, 72}, ns[] = {1, 2, 3, 8, 9, 17, 33, 64};
    const int nmax = 64;
    for (int v = 0; v < 3; v++) { /* BF16, F32 weights, BF16 with x one float off alignment */
        const ds_dtype dt = v == 1 ? DS_F32 : DS_BF16;
        const int K = v == 0 ? 2560 : 320, off = v == 2 ? 1 : 0;
        Weight cw[3], gw[3];
        void *wh[3];
        for (int j = 0; j < 3; j++) {
            float *wf = rand_f32((size_t)Os[j] * K, 1.0f / sqrtf((float)K));
            wh[j] = to_dtype(wf, (size_t)Os[j] * K, dt);
            cw[j] = weight_view(wh[j], dt, Os[j], K);
            gw[j] = gpu_weight(&cw[j]);
            free(wf);
        }
        float *nf = rand_f32((size_t)K, 1.0f);
        void *nh = to_dtype(nf, (size_t)K, DS_BF16);
        Weight cn = weight_view(nh, DS_BF16, 1, K), gn = gpu_weight(&cn);
        float *x = rand_f32((size_t)nmax * K + off, 2.0f), *dx = dev_from(x, sizeof(float) * ((size_t)nmax * K + off));
        float *h = malloc(sizeof(float) * (size_t)nmax * K), *ref[3], *dout[3], *dtmp = g_gpu->alloc(g_gpu, sizeof(float) * (size_t)nmax * K);
        float *swref = malloc(sizeof(float) * (size_t)nmax * Os[0]);
        /* the paired product's up rows: Os[0] a row (dout[2] has Os[2] < Os[0]: the emulated
         * backend under ASan caught the overflow, test_cuda_emu) */
        float *dup = g_gpu->alloc(g_gpu, sizeof(float) * (size_t)nmax * Os[0]);
        for (int j = 0; j < 3; j++) {
            ref[j] = malloc(sizeof(float) * (size_t)nmax * Os[j]);
            dout[j] = g_gpu->alloc(g_gpu, sizeof(float) * (size_t)nmax * Os[j]);
        }
        const Weight *ws3[3] = {&gw[0], &gw[1], &gw[2]}, *ws2[2] = {&gw[0], &gw[0]};
        int rows_same = 0, rows = 0, add_same = 0, adds = 0;
        for (size_t c = 0; c < sizeof ns / sizeof ns[0]; c++) {
            const int n = ns[c];
            char name[96];
            g_cpu->rmsnorm(g_cpu, h, x + off, &cn, n, K, eps);
            for (int j = 0; j < 3; j++) g_cpu->matmul(g_cpu, ref[j], h, &cw[j], n);
            g_gpu->matmul_norm(g_gpu, dout, dx + off, &gn, eps, ws3, 3, n, 0, dtmp);
            float *got[3];
            for (int j = 0; j < 3; j++) {
                got[j] = host_from(dout[j], (size_t)n * Os[j]);
                snprintf(name, sizeof name, "matmul_norm %s%s K %d n %d, product %d", ds_dtype_name(dt), off ? " (unaligned x)" : "", K, n, j);
                CHECK_NSE(name, got[j], ref[j], (size_t)n * Os[j], NSE_F32);
            }
            if (n > 1) { /* the last row alone */
                g_gpu->matmul_norm(g_gpu, dout, dx + off + (size_t)(n - 1) * K, &gn, eps, ws3, 3, 1, 0, dtmp);
                for (int j = 0; j < 3; j++) {
                    float *one = host_from(dout[j], (size_t)Os[j]);
                    rows++;
                    rows_same += memcmp(one, got[j] + (size_t)(n - 1) * Os[j], sizeof(float) * Os[j]) == 0;
                    free(one);
                }
            }
            /* gate/up with swiglu (the same weight twice) */
            for (size_t i = 0; i < (size_t)n * Os[0]; i++) {
                const float g = ref[0][i];
                swref[i] = g / (1.0f + expf(-g)) * g;
            }
            float *gu[2] = {dout[0], dup};
            g_gpu->matmul_norm(g_gpu, gu, dx + off, &gn, eps, ws2, 2, n, 1, dtmp);
            float *sw = host_from(dout[0], (size_t)n * Os[0]);
            snprintf(name, sizeof name, "matmul_norm + swiglu %s%s K %d n %d", ds_dtype_name(dt), off ? " (unaligned x)" : "", K, n);
            CHECK_NSE(name, sw, swref, (size_t)n * Os[0], NSE_F32);
            free(sw);
            /* matmul_add == matmul then add */
            float *y = rand_f32((size_t)n * Os[1], 1.0f), *dy = dev_from(y, sizeof(float) * (size_t)n * Os[1]);
            float *dy2 = dev_from(y, sizeof(float) * (size_t)n * Os[1]);
            g_gpu->matmul_add(g_gpu, dy, dx + off, &gw[1], n, dtmp, NULL);
            g_gpu->matmul(g_gpu, dtmp, dx + off, &gw[1], n);
            g_gpu->add(g_gpu, dy2, dtmp, (size_t)n * Os[1]);
            float *a = host_from(dy, (size_t)n * Os[1]), *b = host_from(dy2, (size_t)n * Os[1]);
            adds++;
            add_same += memcmp(a, b, sizeof(float) * (size_t)n * Os[1]) == 0;
            free(a); free(b); free(y);
            g_gpu->free(g_gpu, dy);
            g_gpu->free(g_gpu, dy2);
            for (int j = 0; j < 3; j++) free(got[j]);
        }
        CHECK_MSG(rows_same == rows, "matmul_norm %s: %d of %d rows alone differ from the batch", ds_dtype_name(dt), rows - rows_same, rows);
        CHECK_MSG(add_same == adds, "matmul_add %s: %d of %d differ from matmul then add", ds_dtype_name(dt), adds - add_same, adds);
        printf("  matmul_norm %s%s: %d of %d rows alone bitwise the batch; matmul_add bitwise matmul + add in %d of %d\n", ds_dtype_name(dt),
               off ? " (unaligned x)" : "", rows_same, rows, add_same, adds);
        if (v == 0) { /* in place (tmp == x, as lm_head's rows): bitwise the result with scratch apart */
            for (int n = 8; n <= 64; n += 9) { /* 8 (NORM), 17 .. 62 (the pre-pass) */
                float *dxi = dev_from(x, sizeof(float) * (size_t)n * K);
                g_gpu->matmul_norm(g_gpu, dout, dx, &gn, eps, ws3, 1, n, 0, dtmp);
                float *apart = host_from(dout[0], (size_t)n * Os[0]);
                g_gpu->matmul_norm(g_gpu, dout, dxi, &gn, eps, ws3, 1, n, 0, dxi);
                float *inplace = host_from(dout[0], (size_t)n * Os[0]);
                CHECK_MSG(memcmp(apart, inplace, sizeof(float) * (size_t)n * Os[0]) == 0, "matmul_norm n %d: in place differs", n);
                free(apart); free(inplace);
                g_gpu->free(g_gpu, dxi);
            }
        }
        if (v == 0) { /* must fail: eps 1e-2 where the CPU used 1e-6, on rows of scale 1e-2 */
            const int n = 8;
            float *xs = malloc(sizeof(float) * (size_t)n * K);
            for (size_t i = 0; i < (size_t)n * K; i++) xs[i] = 1e-2f * x[i];
            float *dxs = dev_from(xs, sizeof(float) * (size_t)n * K);
            g_cpu->rmsnorm(g_cpu, h, xs, &cn, n, K, eps);
            g_cpu->matmul(g_cpu, ref[0], h, &cw[0], n);
            g_gpu->matmul_norm(g_gpu, dout, dxs, &gn, 1e-2f, ws3, 3, n, 0, dtmp);
            float *got = host_from(dout[0], (size_t)n * Os[0]);
            const double e = nse(got, ref[0], (size_t)n * Os[0]);
            CHECK_MSG(e > NSE_F32, "matmul_norm with eps 1e-2 not caught: nse %.3g", e);
            printf("  must fail: matmul_norm with eps 1e-2 against 1e-6: nse %.3g > %.0e\n", e, NSE_F32);
            free(got); free(xs);
            g_gpu->free(g_gpu, dxs);
        }
        for (int j = 0; j < 3; j++) {
            g_gpu->release_weight(g_gpu, &gw[j]);
            g_gpu->free(g_gpu, dout[j]);
            free(wh[j]); free(ref[j]);
        }
        g_gpu->release_weight(g_gpu, &gn);
        g_gpu->free(g_gpu, dx);
        g_gpu->free(g_gpu, dtmp);
        g_gpu->free(g_gpu, dup);
        free(nf); free(nh); free(x); free(h); free(swref);
    }
}

#ifdef DSPARK_HAVE_CUDA
/* x's pieces from the paired swiglu store (matmul_norm of gate/up with act 1): down_proj's
 * product reading them is bitwise the product of a copy of gate (no pieces), at every n of the
 * column product's instances (1-2, 3-5, 6-8, 9-16 rows, chunks of 16 above); and the column
 * product (the default) within NSE_F32 of the CPU and of k_matmul_tc's (DSPARK_CUDA_COL=0) */
static void test_matmul_pieces(void) {
    if (!g_gpu->matmul_norm) return;
    Backend *old = gpu_with_env("DSPARK_CUDA_COL", "0", NULL, NULL);
    if (!old) return;
    const int K = 2560, F = 1056, ns[] = {1, 2, 3, 5, 6, 8, 9, 16, 17, 40, 64};
    const float eps = 1e-6f;
    Weight cw[3], gw[3];
    void *wh[3];
    const int rows[3] = {F, F, K}, cols[3] = {K, K, F};
    for (int j = 0; j < 3; j++) {
        float *wf = rand_f32((size_t)rows[j] * cols[j], 1.0f / sqrtf((float)cols[j]));
        wh[j] = to_dtype(wf, (size_t)rows[j] * cols[j], DS_BF16);
        cw[j] = weight_view(wh[j], DS_BF16, rows[j], cols[j]);
        gw[j] = gpu_weight_tiled(&cw[j]);
        free(wf);
    }
    float *nf = rand_f32((size_t)K, 1.0f);
    void *nh = to_dtype(nf, (size_t)K, DS_BF16);
    Weight cn = weight_view(nh, DS_BF16, 1, K), gn = gpu_weight_tiled(&cn);
    float *x = rand_f32((size_t)64 * K, 1.0f), *dx = dev_from(x, sizeof(float) * 64 * K);
    float *dg = g_gpu->alloc(g_gpu, sizeof(float) * 64 * F), *du = g_gpu->alloc(g_gpu, sizeof(float) * 64 * F);
    float *dc = g_gpu->alloc(g_gpu, sizeof(float) * 64 * F), *dy = g_gpu->alloc(g_gpu, sizeof(float) * 64 * K);
    float *tmp = g_gpu->alloc(g_gpu, sizeof(float) * 64 * K);
    int bad = 0, cases = 0;
    double worst_cpu = 0, worst_old = 0;
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        const int n = ns[i];
        float *outs[2] = {dg, du};
        const Weight *ws[2] = {&gw[0], &gw[1]};
        g_gpu->matmul_norm(g_gpu, outs, dx, &gn, eps, ws, 2, n, 1, tmp);
        g_gpu->matmul(g_gpu, dy, dg, &gw[2], n); /* the swiglu store's pieces */
        float *with = host_from(dy, (size_t)n * K), *gate = host_from(dg, (size_t)n * F);
        g_gpu->copy(g_gpu, dc, dg, sizeof(float) * n * F);
        g_gpu->matmul(g_gpu, dy, dc, &gw[2], n); /* none: a lane's own split or k_split_x */
        float *without = host_from(dy, (size_t)n * K);
        old->matmul(old, dy, dc, &gw[2], n);
        old->synchronize(old);
        float *tc = host_from(dy, (size_t)n * K), *ref = malloc(sizeof(float) * n * K);
        g_cpu->matmul(g_cpu, ref, gate, &cw[2], n);
        cases++;
        if (memcmp(with, without, sizeof(float) * n * K) != 0 && bad++ < 3) CHECK_MSG(0, "down_proj at n %d: with the pieces not bitwise without", n);
        const double e = nse(with, ref, (size_t)n * K), eo = nse(with, tc, (size_t)n * K);
        worst_cpu = e > worst_cpu ? e : worst_cpu;
        worst_old = eo > worst_old ? eo : worst_old;
        free(with); free(gate); free(without); free(tc); free(ref);
    }
    CHECK_MSG(bad == 0, "column product: %d of %d products with the swiglu store's pieces not bitwise without them", bad, cases);
    CHECK_MSG(worst_cpu <= NSE_F32 && worst_old <= NSE_F32, "column product: nse %.3g against the CPU, %.3g against k_matmul_tc", worst_cpu, worst_old);
    printf("  column product (down_proj after the paired swiglu store): %d of %d bitwise with and without the pieces; worst nse "
           "%.3g against the CPU, %.3g against k_matmul_tc\n", cases - bad, cases, worst_cpu, worst_old);
    for (int j = 0; j < 3; j++) {
        g_gpu->release_weight(g_gpu, &gw[j]);
        free(wh[j]);
    }
    g_gpu->release_weight(g_gpu, &gn);
    void *dev[] = {dx, dg, du, dc, dy, tmp};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) g_gpu->free(g_gpu, dev[i]);
    free(nf); free(nh); free(x);
    old->destroy(old);
}
#endif

#ifdef DSPARK_HAVE_CUDA
/* norm pieces (matmul_tc.cuh): matmul_add with next_norm, then matmul_norm by it (two products,
 * and gate/up with swiglu), bitwise the same matmul_norm of a copy of the residual (pieces made
 * by k_norm_pieces) at every n of the column product's instances, and within NSE_F32 of the
 * CPU's add, rmsnorm then matmul. A hint by another norm, or an op between, must not be taken
 * for the norm read (the results stay the CPU's). */
static void norm_pieces_on(Backend *be, const char *what) {
    Backend *old = gpu_with_env("DSPARK_CUDA_NORM_PIECES", "0", NULL, NULL); /* k_matmul_tc's NORM */
    if (!old) return;
    const int K = 2560, F = 2080, ns[] = {1, 2, 3, 5, 6, 8, 9, 16, 17, 40, 64}; /* (2 F >= 4096: the wide products' settings) */
    const float eps = 1e-6f;
    Weight cw[3], gw[3];
    void *wh[3];
    const int rows[3] = {K, F, F}, cols[3] = {F, K, K}; /* o_proj-like, then two products of the residual */
    for (int j = 0; j < 3; j++) {
        float *wf = rand_f32((size_t)rows[j] * cols[j], 1.0f / sqrtf((float)cols[j]));
        wh[j] = to_dtype(wf, (size_t)rows[j] * cols[j], DS_BF16);
        cw[j] = weight_view(wh[j], DS_BF16, rows[j], cols[j]);
        gw[j] = upload_on(be, &cw[j]); /* (through be: its pieces' buffers are sized at upload) */
        free(wf);
    }
    Weight cn[2], gn[2];
    void *nh[2];
    for (int j = 0; j < 2; j++) {
        float *nf = rand_f32((size_t)K, 1.0f);
        nh[j] = to_dtype(nf, (size_t)K, DS_BF16);
        cn[j] = weight_view(nh[j], DS_BF16, 1, K);
        gn[j] = upload_on(be, &cn[j]);
        free(nf);
    }
    float *a = rand_f32((size_t)64 * F, 1.0f), *res = rand_f32((size_t)64 * K, 1.0f);
    float *da = dev_from(a, sizeof(float) * 64 * F), *dres = g_gpu->alloc(g_gpu, sizeof(float) * 64 * K);
    float *dcopy = g_gpu->alloc(g_gpu, sizeof(float) * 64 * K), *tmp = g_gpu->alloc(g_gpu, sizeof(float) * 64 * K);
    float *d1 = g_gpu->alloc(g_gpu, sizeof(float) * 64 * F), *d2 = g_gpu->alloc(g_gpu, sizeof(float) * 64 * F);
    float *h = malloc(sizeof(float) * 64 * K), *ref1 = malloc(sizeof(float) * 64 * F), *ref2 = malloc(sizeof(float) * 64 * F);
    float *refsw = malloc(sizeof(float) * 64 * F);
    int bad = 0, cases = 0, alone_bad = 0, alone_cases = 0;
    double worst = 0, worst_old = 0;
    for (size_t c = 0; c < sizeof ns / sizeof ns[0]; c++) {
        const int n = ns[c];
        /* the CPU: res + a . Wo^T, rmsnorm by norm 0, the two products */
        float *x = malloc(sizeof(float) * n * K);
        g_cpu->matmul(g_cpu, x, a, &cw[0], n);
        for (size_t i = 0; i < (size_t)n * K; i++) x[i] = res[i] + x[i];
        g_cpu->rmsnorm(g_cpu, h, x, &cn[0], n, K, eps);
        g_cpu->matmul(g_cpu, ref1, h, &cw[1], n);
        g_cpu->matmul(g_cpu, ref2, h, &cw[2], n);
        for (size_t i = 0; i < (size_t)n * F; i++) refsw[i] = ref1[i] / (1.0f + expf(-ref1[i])) * ref2[i];
        for (int act = 0; act < 2; act++)
            for (int hint = 0; hint < 4; hint++) { /* by norm 0, none, by norm 1 (not the one read), by norm 0 then an op between */
                be->to_device(be, dres, res, sizeof(float) * n * K);
                be->matmul_add(be, dres, da, &gw[0], n, tmp, hint == 1 ? NULL : hint == 2 ? &gn[1] : &gn[0]);
                if (hint == 3) be->add(be, d2, d1, 1);
                float *outs[2] = {d1, d2};
                const Weight *ws[2] = {&gw[1], &gw[2]};
                be->matmul_norm(be, outs, dres, &gn[0], eps, ws, 2, n, act, tmp);
                be->synchronize(be);
                float *o1 = host_from(d1, (size_t)n * F), *o2 = host_from(d2, (size_t)n * F);
                be->copy(be, dcopy, dres, sizeof(float) * n * K); /* (no pieces for the copy) */
                be->matmul_norm(be, outs, dcopy, &gn[0], eps, ws, 2, n, act, tmp);
                be->synchronize(be);
                float *p1 = host_from(d1, (size_t)n * F), *p2 = host_from(d2, (size_t)n * F);
                cases++;
                if ((memcmp(o1, p1, sizeof(float) * n * F) || memcmp(o2, p2, sizeof(float) * n * F)) && bad++ < 3)
                    CHECK_MSG(0, "norm pieces n %d act %d hint %d: not bitwise the copy's", n, act, hint);
                if (hint == 1 && n > 1) { /* the last row alone: bitwise its row of the batch (any kernel or chunking a row count picks) */
                    be->matmul_norm(be, outs, dcopy + (size_t)(n - 1) * K, &gn[0], eps, ws, 2, 1, act, tmp);
                    be->synchronize(be);
                    float *a1 = host_from(d1, (size_t)F), *a2 = host_from(d2, (size_t)F);
                    alone_cases++;
                    if ((memcmp(a1, o1 + (size_t)(n - 1) * F, sizeof(float) * F) || memcmp(a2, o2 + (size_t)(n - 1) * F, sizeof(float) * F)) &&
                        alone_bad++ < 3)
                        CHECK_MSG(0, "norm pieces n %d act %d: the last row alone is not bitwise its row of the batch", n, act);
                    free(a1); free(a2);
                }
                const double e1 = nse(o1, act ? refsw : ref1, (size_t)n * F), e2 = nse(o2, ref2, (size_t)n * F); /* (act: out[1] is up) */
                const double e = e1 > e2 ? e1 : e2;
                worst = e > worst ? e : worst;
                if (hint == 0) { /* against k_matmul_tc's NORM */
                    old->matmul_norm(old, outs, dcopy, &gn[0], eps, ws, 2, n, act, tmp);
                    old->synchronize(old);
                    float *t1 = host_from(d1, (size_t)n * F), *t2 = host_from(d2, (size_t)n * F);
                    const double f1 = nse(o1, t1, (size_t)n * F), f2 = nse(o2, t2, (size_t)n * F);
                    worst_old = f1 > worst_old ? f1 : worst_old;
                    worst_old = f2 > worst_old ? f2 : worst_old;
                    free(t1); free(t2);
                }
                free(o1); free(o2); free(p1); free(p2);
            }
        free(x);
    }
    CHECK_MSG(bad == 0, "norm pieces (%s): %d of %d not bitwise the copy's", what, bad, cases);
    CHECK_MSG(alone_bad == 0, "norm pieces (%s): %d of %d rows alone not bitwise the batch", what, alone_bad, alone_cases);
    CHECK_MSG(worst <= NSE_F32 && worst_old <= NSE_F32, "norm pieces (%s): worst nse %.3g against the CPU, %.3g against k_matmul_tc's NORM", what,
              worst, worst_old);
    printf("  norm pieces (%s; matmul_add's hint, then matmul_norm): %d of %d bitwise without them, %d of %d rows alone bitwise the "
           "batch; worst nse %.3g against the CPU, %.3g against k_matmul_tc's NORM\n", what, cases - bad, cases, alone_cases - alone_bad,
           alone_cases, worst, worst_old);
    for (int j = 0; j < 3; j++) {
        be->release_weight(be, &gw[j]);
        free(wh[j]);
    }
    for (int j = 0; j < 2; j++) {
        be->release_weight(be, &gn[j]);
        free(nh[j]);
    }
    void *dev[] = {da, dres, dcopy, tmp, d1, d2};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) g_gpu->free(g_gpu, dev[i]);
    free(a); free(res); free(h); free(ref1); free(ref2); free(refsw);
    old->destroy(old);
}
static void test_norm_pieces(void) {
    if (!g_gpu->matmul_norm || !g_gpu->matmul_add) return;
    norm_pieces_on(g_gpu, "default");
    Backend *all = gpu_with_env("DSPARK_CUDA_NORM_PIECES", "1", NULL, NULL); /* the paired gate/up store too */
    if (!all) return;
    norm_pieces_on(all, "DSPARK_CUDA_NORM_PIECES=1");
    /* BackendUse: a one-stream backend's paired gate/up is NORM_PIECES=1's, bitwise, and with
     * DSPARK_CUDA_NORM_PIECES=2 the batched default's; the two kernels' bits differ (the case
     * that must fail: were they equal, the choice would be untested) */
    Backend *one = gpu_with_env_for(true, NULL, NULL, NULL, NULL), *one2 = gpu_with_env_for(true, "DSPARK_CUDA_NORM_PIECES", "2", NULL, NULL);
    if (one && one2) {
        const int K = 2560, F = 2080, n = 3;
        const float eps = 1e-6f;
        Backend *bes[4] = {one, all, one2, g_gpu};
        float *got[4][2];
        float *x = rand_f32((size_t)n * K, 1.0f), *nf = rand_f32((size_t)K, 1.0f), *wf[2];
        void *nh = to_dtype(nf, (size_t)K, DS_BF16), *wh[2];
        for (int j = 0; j < 2; j++) {
            wf[j] = rand_f32((size_t)F * K, 1.0f / sqrtf((float)K));
            wh[j] = to_dtype(wf[j], (size_t)F * K, DS_BF16);
        }
        for (int b = 0; b < 4; b++) {
            Backend *be = bes[b];
            Weight cn = weight_view(nh, DS_BF16, 1, K), gn = upload_on(be, &cn), cw[2], gw[2];
            for (int j = 0; j < 2; j++) {
                cw[j] = weight_view(wh[j], DS_BF16, F, K);
                gw[j] = upload_on(be, &cw[j]);
            }
            float *dx = be->alloc(be, sizeof(float) * n * K), *tmp = be->alloc(be, sizeof(float) * n * K);
            float *d1 = be->alloc(be, sizeof(float) * n * F), *d2 = be->alloc(be, sizeof(float) * n * F), *outs[2] = {d1, d2};
            const Weight *ws[2] = {&gw[0], &gw[1]};
            be->to_device(be, dx, x, sizeof(float) * n * K);
            be->matmul_norm(be, outs, dx, &gn, eps, ws, 2, n, 1, tmp);
            be->synchronize(be);
            for (int j = 0; j < 2; j++) {
                got[b][j] = malloc(sizeof(float) * n * F);
                be->to_host(be, got[b][j], outs[j], sizeof(float) * n * F);
            }
            void *dev[] = {dx, tmp, d1, d2};
            for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) be->free(be, dev[i]);
            be->release_weight(be, &gn);
            for (int j = 0; j < 2; j++) be->release_weight(be, &gw[j]);
        }
        const size_t bytes = sizeof(float) * n * F;
        CHECK_MSG(!memcmp(got[0][0], got[1][0], bytes) && !memcmp(got[0][1], got[1][1], bytes),
                  "one-stream backend: the paired gate/up is not bitwise DSPARK_CUDA_NORM_PIECES=1's");
        CHECK_MSG(!memcmp(got[2][0], got[3][0], bytes) && !memcmp(got[2][1], got[3][1], bytes),
                  "one-stream backend with DSPARK_CUDA_NORM_PIECES=2: not bitwise the batched default's");
        CHECK_MSG(memcmp(got[0][0], got[3][0], bytes) != 0, "one-stream and batched backends: the same bits (the kernel choice is not made)");
        printf("  BackendUse: one stream bitwise NORM_PIECES=1 and, with =2, the batched default; the two differ: %s\n",
               memcmp(got[0][0], got[3][0], bytes) ? "yes" : "NO");
        for (int b = 0; b < 4; b++) { free(got[b][0]); free(got[b][1]); }
        for (int j = 0; j < 2; j++) { free(wf[j]); free(wh[j]); }
        free(x); free(nf); free(nh);
    }
    if (one) one->destroy(one);
    if (one2) one2->destroy(one2);
    all->destroy(all);
}
#endif

static void test_rmsnorm(void) {
    const int dims[][2] = {{12, 16}, {5, 64}, {3, 300}, {2, 2560}, {40, 128}, {2, 5120}, {2, 6000}}; /* 6000: not in registers */
    for (int dt = 0; dt < 2; dt++)
        for (size_t c = 0; c < sizeof dims / sizeof dims[0]; c++) {
            int n = dims[c][0], dim = dims[c][1];
            float *x = rand_f32((size_t)n * dim, 2.0f), *wf = rand_f32((size_t)dim, 1.0f);
            void *wh = to_dtype(wf, (size_t)dim, dt ? DS_BF16 : DS_F32);
            Weight cw = weight_view(wh, dt ? DS_BF16 : DS_F32, 1, dim), gw = gpu_weight(&cw);
            float *ref = malloc(sizeof(float) * (size_t)n * dim);
            g_cpu->rmsnorm(g_cpu, ref, x, &cw, n, dim, 1e-6f);
            float *dx = dev_from(x, sizeof(float) * (size_t)n * dim);
            g_gpu->rmsnorm(g_gpu, dx, dx, &gw, n, dim, 1e-6f); /* in place, as the q/k norms */
            float *got = host_from(dx, (size_t)n * dim);
            char name[64];
            snprintf(name, sizeof name, "rmsnorm %s n %d dim %d", dt ? "BF16" : "F32", n, dim);
            CHECK_NSE(name, got, ref, (size_t)n * dim, NSE_F32);
            g_gpu->release_weight(g_gpu, &gw);
            g_gpu->free(g_gpu, dx);
            free(x); free(wf); free(wh); free(ref); free(got);
        }
}

static void test_rope(void) {
    const int cfg[][3] = {{9, 4, 16}, {5, 8, 128}, {3, 2, 80}};
    const float thetas[] = {1e4f, 1e6f};
    for (size_t c = 0; c < 3; c++)
        for (int t = 0; t < 2; t++) {
            int n = cfg[c][0], H = cfg[c][1], hd = cfg[c][2];
            size_t sz = (size_t)n * H * hd;
            float *x = rand_f32(sz, 1.0f), *ref = malloc(sizeof(float) * sz);
            memcpy(ref, x, sizeof(float) * sz);
            int32_t pos[16];
            for (int i = 0; i < n; i++) pos[i] = (int32_t)(rng_next(&g_rng) % 40000);
            g_cpu->rope(g_cpu, ref, pos, n, H, hd, thetas[t]);
            float *dx = dev_from(x, sizeof(float) * sz);
            int32_t *dpos = dev_from(pos, sizeof(int32_t) * n);
            g_gpu->rope(g_gpu, dx, dpos, n, H, hd, thetas[t]);
            float *got = host_from(dx, sz);
            char name[64];
            snprintf(name, sizeof name, "rope n %d heads %d hd %d theta %g", n, H, hd, thetas[t]);
            CHECK_NSE(name, got, ref, sz, NSE_F32);
            g_gpu->free(g_gpu, dx);
            g_gpu->free(g_gpu, dpos);
            free(x); free(ref); free(got);
        }
}

/* kv_write then attention over a flattened batch: each token its own slot and kv_len */
#ifdef DSPARK_HAVE_CUDA
/* x's pieces (k_matmul_col): a product of attention's output, reading the pieces the attention
 * merge stored, is bitwise the product of a copy of it (no pieces: the product makes them), for
 * the n tokens and for token 5 alone (its row of the batch), and within NSE_F32 of the CPU's
 * product of got (the attention's output on the host) */
static void att_then_product(const char *name, const KvCache *gk, const float *dq, const int32_t *dslot, const int32_t *dlen, int n, int H,
                             int KV, int hd, const float *got) {
    const int K = H * hd, O = 40;
    float *wf = rand_f32((size_t)O * K, 1.0f / sqrtf((float)K));
    void *wh = to_dtype(wf, (size_t)O * K, DS_BF16);
    Weight cw = weight_view(wh, DS_BF16, O, K), gw = gpu_weight_tiled(&cw);
    float *datt = g_gpu->alloc(g_gpu, sizeof(float) * n * K), *dcopy = g_gpu->alloc(g_gpu, sizeof(float) * n * K);
    float *dy = g_gpu->alloc(g_gpu, sizeof(float) * n * O);
    float *ref = malloc(sizeof(float) * n * O);
    g_cpu->matmul(g_cpu, ref, got, &cw, n);
    g_gpu->attention(g_gpu, datt, dq, gk, 1, dslot, dlen, n, H, KV, hd);
    g_gpu->matmul(g_gpu, dy, datt, &gw, n); /* the merge's pieces */
    float *with = host_from(dy, (size_t)n * O);
    g_gpu->copy(g_gpu, dcopy, datt, sizeof(float) * n * K);
    g_gpu->matmul(g_gpu, dy, dcopy, &gw, n); /* k_split_x's */
    float *without = host_from(dy, (size_t)n * O);
    g_gpu->attention(g_gpu, datt, dq + (size_t)5 * K, gk, 1, dslot + 5, dlen + 5, 1, H, KV, hd);
    g_gpu->matmul(g_gpu, dy, datt, &gw, 1);
    float *one = host_from(dy, (size_t)O);
    char pn[96];
    snprintf(pn, sizeof pn, "%s, then a product", name);
    CHECK_NSE(pn, with, ref, (size_t)n * O, NSE_F32);
    CHECK_MSG(memcmp(with, without, sizeof(float) * n * O) == 0, "%s: with the merge's pieces not bitwise without", pn);
    CHECK_MSG(memcmp(one, with + (size_t)5 * O, sizeof(float) * O) == 0, "%s: token 5 alone not bitwise its row", pn);
    g_gpu->release_weight(g_gpu, &gw);
    g_gpu->free(g_gpu, datt);
    g_gpu->free(g_gpu, dcopy);
    g_gpu->free(g_gpu, dy);
    free(wf); free(wh); free(ref); free(with); free(without); free(one);
}
#endif

static void test_attention(void) {
    /* heads, kv heads, hd, context: the scalar kernels take a KV head's query heads per block
     * for groups 2, 4, 8 with group * ceil(hd / 32) <= 32, else one head per block (group 1 and
     * 3; group 8 at hd 256); hd 66: 4 dims a lane one in 32 apart (not a multiple of 4: no float4
     * rows). The tensor cores (hd 16..128) take 16 rows: groups 2, 4, 8 and 16 by 8, 4, 2 tokens
     * and 1 and 3 by 16 tokens of one head; 1500 keys: 128- and 256-key chunks in one block */
    const int cfg[][4] = {{4, 2, 16, 300}, {8, 2, 128, 1500}, {6, 3, 80, 300}, {2, 1, 256, 700}, {16, 2, 64, 600}, {6, 2, 32, 200},
                          {8, 1, 256, 100}, {32, 8, 128, 530}, {8, 2, 66, 300}, {16, 1, 32, 400}};
    /* the scalar kernels, per head (DSPARK_CUDA_ATT=0) and grouped wherever that applies (=1),
     * with the default chunks (128 or 256 keys by key count: bitwise the default backend's) and
     * fixed ones: each checked against the CPU, per head == grouped, and a token alone == its
     * row of the batch; row 4: a block taking all of a token's splits in turn, or every third
     * (DSPARK_CUDA_ATT_Z), bitwise the default. Rows 5-7: the tensor-core kernel
     * (DSPARK_CUDA_ATT_TC=1, hd % 16 == 0 and <= 128; else the scalar ones) the same way: rows 5
     * and 7, other blocks (splits in turn, tokens per block: ATT_Z, ATT_TG), bitwise row 5's
     * first; row 6 at 64-key chunks (several chunks a split from 1024 keys on). Rows 8-9: 8
     * lanes a row (DSPARK_CUDA_ATT_R8=1, hd 32, 64, 128, 256; else the scalar ones) per head and
     * grouped, at the default chunks and 64-key ones, the same way */
    enum { NCH = 10 };
    static const char *const chunk_env[NCH][2] = {
        {"DSPARK_CUDA_ATT=0", "DSPARK_CUDA_ATT=1"},
        {"DSPARK_CUDA_ATT=0 DSPARK_CUDA_ATT_CHUNK=32", "DSPARK_CUDA_ATT=1 DSPARK_CUDA_ATT_CHUNK=32"},
        {"DSPARK_CUDA_ATT=0 DSPARK_CUDA_ATT_CHUNK=24", "DSPARK_CUDA_ATT=1 DSPARK_CUDA_ATT_CHUNK=24"},
        {"DSPARK_CUDA_ATT=0 DSPARK_CUDA_ATT_CHUNK=64", "DSPARK_CUDA_ATT=1 DSPARK_CUDA_ATT_CHUNK=64"},
        {"DSPARK_CUDA_ATT=0 DSPARK_CUDA_ATT_Z=1", "DSPARK_CUDA_ATT=1 DSPARK_CUDA_ATT_Z=3"},
        {"DSPARK_CUDA_ATT_TC=1", "DSPARK_CUDA_ATT_TC=1 DSPARK_CUDA_ATT_Z=1 DSPARK_CUDA_ATT_TG=1"},
        {"DSPARK_CUDA_ATT_TC=1 DSPARK_CUDA_ATT_CHUNK=64", "DSPARK_CUDA_ATT_TC=1 DSPARK_CUDA_ATT_CHUNK=64 DSPARK_CUDA_ATT_TG=2 DSPARK_CUDA_ATT_Z=2"},
        {"DSPARK_CUDA_ATT_TC=1 DSPARK_CUDA_ATT_Z=3 DSPARK_CUDA_ATT_TG=3", "DSPARK_CUDA_ATT_TC=1 DSPARK_CUDA_ATT_Z=2 DSPARK_CUDA_ATT_TG=2"},
        {"DSPARK_CUDA_ATT_R8=1 DSPARK_CUDA_ATT=0", "DSPARK_CUDA_ATT_R8=1 DSPARK_CUDA_ATT=1 DSPARK_CUDA_ATT_Z=3"},
        {"DSPARK_CUDA_ATT_R8=1 DSPARK_CUDA_ATT=0 DSPARK_CUDA_ATT_CHUNK=64 DSPARK_CUDA_ATT_Z=1", "DSPARK_CUDA_ATT_R8=1 DSPARK_CUDA_ATT=1 DSPARK_CUDA_ATT_CHUNK=64"}};
    Backend *chunk_be[NCH][2] = {{NULL}};
#ifdef DSPARK_HAVE_CUDA
    for (int ch = 0; ch < NCH; ch++)
        for (int b = 0; b < 2; b++) chunk_be[ch][b] = gpu_with_envs(chunk_env[ch][b]);
#endif
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        const int H = cfg[c][0], KV = cfg[c][1], hd = cfg[c][2], L = 2, S = 3, T = cfg[c][3], n = 9;
        KvCache ck = {NULL, NULL, L, S, T, KV * hd}, gk = ck;
        size_t kvn = (size_t)L * S * T * KV * hd;
        ck.k = rand_f32(kvn, 1.0f);
        ck.v = rand_f32(kvn, 1.0f);
        gk.k = dev_from(ck.k, sizeof(float) * kvn);
        gk.v = dev_from(ck.v, sizeof(float) * kvn);
        int32_t slot[16], pos[16], len[16];
        for (int i = 0; i < n; i++) {
            slot[i] = (int32_t)(rng_next(&g_rng) % S);
            len[i] = i == 0 ? 1 : i == 1 ? T : 1 + (int32_t)(rng_next(&g_rng) % T);
            pos[i] = len[i] - 1;
        }
        slot[2] = slot[3]; /* two tokens of one sequence */
        if (c % 2) /* and a verify's run: 4 of one sequence, consecutive */
            for (int i = 5; i < 8; i++) {
                slot[i] = slot[4];
                len[i] = len[4] + (i - 4) <= T ? len[4] + (i - 4) : len[4] - (i - 4);
                pos[i] = len[i] - 1;
            }
        for (int i = 1; i < n; i++) /* distinct (slot, pos): concurrent writes to one row would race */
            for (int j = 0; j < i; j++)
                if (slot[j] == slot[i] && pos[j] == pos[i]) { len[i] = 1 + (len[i] % (T - 1)); pos[i] = len[i] - 1; j = -1; }
        float *k = rand_f32((size_t)n * KV * hd, 1.0f), *v = rand_f32((size_t)n * KV * hd, 1.0f), *q = rand_f32((size_t)n * H * hd, 1.0f);
        float *dk = dev_from(k, sizeof(float) * n * KV * hd), *dv = dev_from(v, sizeof(float) * n * KV * hd);
        float *dq = dev_from(q, sizeof(float) * n * H * hd), *dout = g_gpu->alloc(g_gpu, sizeof(float) * n * H * hd);
        int32_t *dslot = dev_from(slot, sizeof slot), *dpos = dev_from(pos, sizeof pos), *dlen = dev_from(len, sizeof len);
        for (int layer = 0; layer < L; layer++) {
            g_cpu->kv_write(g_cpu, &ck, layer, k, v, slot, pos, n);
            g_gpu->kv_write(g_gpu, &gk, layer, dk, dv, dslot, dpos, n);
        }
        float *gkh = host_from(gk.k, kvn), *gvh = host_from(gk.v, kvn);
        CHECK_MSG(memcmp(gkh, ck.k, sizeof(float) * kvn) == 0 && memcmp(gvh, ck.v, sizeof(float) * kvn) == 0, "kv_write differs (hd %d)", hd);
        float *ref = malloc(sizeof(float) * n * H * hd);
        g_cpu->attention(g_cpu, ref, q, &ck, 1, slot, len, n, H, KV, hd);
        g_gpu->attention(g_gpu, dout, dq, &gk, 1, dslot, dlen, n, H, KV, hd);
        float *got = host_from(dout, (size_t)n * H * hd);
        char name[64];
        snprintf(name, sizeof name, "attention H %d KV %d hd %d", H, KV, hd);
        CHECK_NSE(name, got, ref, (size_t)n * H * hd, NSE_F32);
#ifdef DSPARK_HAVE_CUDA
        if ((H * hd) % 32 == 0) att_then_product(name, &gk, dq, dslot, dlen, n, H, KV, hd, got);
#endif
        /* token 5 alone: bitwise its row of the batch */
        g_gpu->attention(g_gpu, dout, dq + (size_t)5 * H * hd, &gk, 1, dslot + 5, dlen + 5, 1, H, KV, hd);
        float *one = host_from(dout, (size_t)H * hd);
        CHECK_MSG(memcmp(one, got + (size_t)5 * H * hd, sizeof(float) * H * hd) == 0, "%s: token alone differs from the batch", name);
        float *tc_ref = NULL; /* row 5's first */
        /* the default backend's kernel: the scalar ones, or with DSPARK_CUDA_ATT_TC=1 set for the
         * whole run the tensor cores where they apply (then rows 5 and 7 are the default) */
        const char *tc_env = getenv("DSPARK_CUDA_ATT_TC");
        const bool tc_default = tc_env && !strcmp(tc_env, "1") && hd % 16 == 0 && hd <= 128;
        /* (and with DSPARK_CUDA_ATT_R8=1 for the whole run, 8 lanes a row where they apply: row 8) */
        const char *r8_env = getenv("DSPARK_CUDA_ATT_R8");
        const bool r8_default = !tc_default && r8_env && !strcmp(r8_env, "1") && (hd == 32 || hd == 64 || hd == 128 || hd == 256);
        for (int ch = 0; ch < NCH; ch++) {
            float *first = NULL;
            for (int b = 0; b < 2; b++) {
                Backend *be = chunk_be[ch][b];
                if (!be) continue;
                be->attention(be, dout, dq, &gk, 1, dslot, dlen, n, H, KV, hd);
                be->synchronize(be); /* its own stream */
                float *all = host_from(dout, (size_t)n * H * hd);
                be->attention(be, dout, dq + (size_t)5 * H * hd, &gk, 1, dslot + 5, dlen + 5, 1, H, KV, hd);
                be->synchronize(be);
                float *alone = host_from(dout, (size_t)H * hd);
                char cname[128];
                snprintf(cname, sizeof cname, "%s (%s)", name, chunk_env[ch][b]);
                CHECK_NSE(cname, all, ref, (size_t)n * H * hd, NSE_F32);
                CHECK_MSG(memcmp(alone, all + (size_t)5 * H * hd, sizeof(float) * H * hd) == 0, "%s: token alone differs from the batch", cname);
                if (tc_default ? ch == 5 || ch == 7 : r8_default ? ch == 8 : ch == 0 || ch == 4)
                    CHECK_MSG(memcmp(all, got, sizeof(float) * n * H * hd) == 0, "%s: differs from the default", cname);
                if ((ch == 5 || ch == 7) && tc_ref)
                    CHECK_MSG(memcmp(all, tc_ref, sizeof(float) * n * H * hd) == 0, "%s: differs from %s", cname, chunk_env[5][0]);
                if (first) CHECK_MSG(memcmp(first, all, sizeof(float) * n * H * hd) == 0, "%s: differs from %s", cname, chunk_env[ch][0]);
                free(alone);
                if (first) free(all);
                else first = all;
            }
            if (ch == 5) tc_ref = first;
            else free(first);
        }
        free(tc_ref);
        void *dev[] = {gk.k, gk.v, dk, dv, dq, dout, dslot, dpos, dlen};
        for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) g_gpu->free(g_gpu, dev[i]);
        free(ck.k); free(ck.v); free(k); free(v); free(q); free(gkh); free(gvh); free(ref); free(got); free(one);
    }
    for (int ch = 0; ch < NCH; ch++)
        for (int b = 0; b < 2; b++)
            if (chunk_be[ch][b]) chunk_be[ch][b]->destroy(chunk_be[ch][b]);
}

static void test_elementwise(void) {
    const size_t n = 100003;
    float *a = rand_f32(n, 2.0f), *b = rand_f32(n, 2.0f), *c = rand_f32(n, 1.0f), *ref = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) c[i] = 1.0f / (1.0f + expf(-c[i])); /* a gate in (0, 1) */
    float *da = dev_from(a, sizeof(float) * n), *db = dev_from(b, sizeof(float) * n), *dc = dev_from(c, sizeof(float) * n);
    float *dout = g_gpu->alloc(g_gpu, sizeof(float) * n), *got;
    /* swiglu */
    g_cpu->swiglu(g_cpu, ref, a, b, n);
    g_gpu->swiglu(g_gpu, dout, da, db, n);
    got = host_from(dout, n);
    CHECK_NSE("swiglu", got, ref, n, NSE_F32);
    free(got);
    /* ew: mul (bitwise), lerp with out aliasing a */
    g_cpu->ew(g_cpu, EW_MUL, ref, a, b, NULL, n);
    g_gpu->ew(g_gpu, EW_MUL, dout, da, db, NULL, n);
    got = host_from(dout, n);
    CHECK_MSG(memcmp(got, ref, sizeof(float) * n) == 0, "ew mul not bitwise");
    free(got);
    memcpy(ref, a, sizeof(float) * n);
    g_cpu->ew(g_cpu, EW_LERP, ref, ref, b, c, n);
    g_gpu->copy(g_gpu, dout, da, sizeof(float) * n);
    g_gpu->ew(g_gpu, EW_LERP, dout, dout, db, dc, n);
    got = host_from(dout, n);
    CHECK_NSE("ew lerp", got, ref, n, NSE_F32);
    free(got);
    /* add (bitwise) */
    memcpy(ref, a, sizeof(float) * n);
    g_cpu->add(g_cpu, ref, b, n);
    g_gpu->copy(g_gpu, dout, da, sizeof(float) * n);
    g_gpu->add(g_gpu, dout, db, n);
    got = host_from(dout, n);
    CHECK_MSG(memcmp(got, ref, sizeof(float) * n) == 0, "add not bitwise");
    free(got);
    /* bias_act: no bias / F32 / BF16 bias, each activation */
    const int rows = 7, dim = 300;
    float *bf = rand_f32(dim, 1.0f);
    void *bb = to_dtype(bf, dim, DS_BF16);
    Weight cb32 = weight_view(bf, DS_F32, 1, dim), cb16 = weight_view(bb, DS_BF16, 1, dim);
    Weight gb32 = gpu_weight(&cb32), gb16 = gpu_weight(&cb16);
    for (int act = 0; act < 3; act++)
        for (int bk = 0; bk < 3; bk++) {
            memcpy(ref, a, sizeof(float) * rows * dim);
            g_cpu->bias_act(g_cpu, ref, bk == 0 ? NULL : bk == 1 ? &cb32 : &cb16, rows, dim, act);
            g_gpu->copy(g_gpu, dout, da, sizeof(float) * rows * dim);
            g_gpu->bias_act(g_gpu, dout, bk == 0 ? NULL : bk == 1 ? &gb32 : &gb16, rows, dim, act);
            got = host_from(dout, (size_t)rows * dim);
            char name[64];
            snprintf(name, sizeof name, "bias_act act %d bias %d", act, bk);
            CHECK_NSE(name, got, ref, (size_t)rows * dim, NSE_F32);
            free(got);
        }
    g_gpu->release_weight(g_gpu, &gb32);
    g_gpu->release_weight(g_gpu, &gb16);
    free(bf); free(bb);
    /* gather_rows with row ids and strides, and the identity (rows NULL) */
    int32_t ids[5] = {9, 0, 4, 4, 11};
    int32_t *dids = dev_from(ids, sizeof ids);
    memset(ref, 0, sizeof(float) * 5 * 40);
    g_cpu->gather_rows(g_cpu, ref, 40, a, 37, ids, 5, 30);
    g_cpu->gather_rows(g_cpu, ref + 30, 40, b, 50, NULL, 5, 10);
    float *dz = g_gpu->alloc(g_gpu, sizeof(float) * 5 * 64); /* the gather's 5 x 40, then embed's 5 x 64 */
    g_gpu->gather_rows(g_gpu, dz, 40, da, 37, dids, 5, 30);
    g_gpu->gather_rows(g_gpu, dz + 30, 40, db, 50, NULL, 5, 10);
    got = host_from(dz, 5 * 40);
    CHECK_MSG(memcmp(got, ref, sizeof(float) * 5 * 40) == 0, "gather_rows not bitwise");
    free(got);
    /* embed from F32 and BF16 tables (bitwise: widening is exact) */
    for (int dt = 0; dt < 2; dt++) {
        void *th = to_dtype(a, 20 * 64, dt ? DS_BF16 : DS_F32);
        Weight ct = weight_view(th, dt ? DS_BF16 : DS_F32, 20, 64), gt = gpu_weight(&ct), gtt = gpu_weight_tiled(&ct);
        g_cpu->embed(g_cpu, ref, &ct, ids, 5);
        for (int t = 0; t < 2; t++) { /* row-major, then g_gpu's layout (BF16: tiles, the last one padded) */
            g_gpu->embed(g_gpu, dz, t ? &gtt : &gt, dids, 5);
            got = host_from(dz, 5 * 64);
            CHECK_MSG(memcmp(got, ref, sizeof(float) * 5 * 64) == 0, "embed %s%s not bitwise", dt ? "BF16" : "F32", t ? " (g_gpu's upload)" : "");
            free(got);
        }
        CHECK_MSG(gtt.dev_layout == (dt ? 1 : 0), "embed table %s: layout %d", dt ? "BF16" : "F32", gtt.dev_layout);
        g_gpu->release_weight(g_gpu, &gt);
        g_gpu->release_weight(g_gpu, &gtt);
        free(th);
    }
    void *dev[] = {da, db, dc, dout, dids, dz};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) g_gpu->free(g_gpu, dev[i]);
    free(a); free(b); free(c); free(ref);
}

/* ---- models ---- */

static Qwen3Model g_tc, g_tg; /* the tiny target on the CPU and on the GPU */
static int32_t g_ids[40];

static void load_ids(void) {
    NpyArray a;
    char err[DS_ERR_LEN];
    CHECK_OK(npy_read(test_data("tiny-qwen3/target_ids.npy"), &a, err), err);
    for (int i = 0; i < 40 && i < (int)a.numel; i++) g_ids[i] = (int32_t)((int64_t *)a.data)[i];
    npy_free(&a);
}

/* one forward of ids on both backends: all logits rows and every layer's features */
static void forward_case(const char *dir, const int32_t *ids, int n) {
    char err[DS_ERR_LEN];
    Qwen3Model mc, mg;
    CHECK_OK(qwen3_load(&mc, test_data(dir), g_cpu, err), err);
    CHECK_OK(qwen3_load(&mg, test_data(dir), g_gpu, err), err);
    const int V = mc.cfg.vocab_size, d = mc.cfg.hidden_size, nl = mc.cfg.n_layers;
    int feats[16], nf = 0;
    feats[nf++] = -1;
    for (int l = 0; l < nl; l++) feats[nf++] = l;
    feats[nf++] = QWEN3_FINAL_NORM;
    int32_t pos[256], rows[256];
    for (int i = 0; i < n; i++) pos[i] = rows[i] = i;
    Qwen3Batch b = {.n = n, .tokens = ids, .pos = pos, .logit_rows = rows, .n_logits = n, .feature_layers = feats, .n_feature_layers = nf};
    Qwen3State sc, sg;
    CHECK_OK(qwen3_state_init(&sc, &mc, n, n, nf, 1, n, err), err);
    CHECK_OK(qwen3_state_init(&sg, &mg, n, n, nf, 1, n, err), err);
    CHECK_OK(qwen3_forward(&mc, &sc, &b, err), err);
    CHECK_OK(qwen3_forward(&mg, &sg, &b, err), err);
    char name[128];
    snprintf(name, sizeof name, "forward %s n %d logits", dir, n);
    CHECK_NSE(name, sg.logits_host, sc.logits_host, (size_t)n * V, NSE_F32);
    float *fg = host_from(sg.features, (size_t)n * nf * d);
    snprintf(name, sizeof name, "forward %s n %d features", dir, n);
    CHECK_NSE(name, fg, sc.features, (size_t)n * nf * d, NSE_F32);
    int argmax_diff = 0;
    for (int i = 0; i < n; i++) argmax_diff += argmax_f32(sg.logits_host + (size_t)i * V, V) != argmax_f32(sc.logits_host + (size_t)i * V, V);
    CHECK_MSG(argmax_diff == 0, "%s: %d rows with another argmax", name, argmax_diff);
    free(fg);
    qwen3_state_free(&sc, &mc);
    qwen3_state_free(&sg, &mg);
    qwen3_free(&mc);
    qwen3_free(&mg);
}

static void test_forward(void) {
    forward_case("tiny-qwen3/target", g_ids, 40);
    forward_case("tiny-qwen3/target-bf16", g_ids, 40);
    int32_t ids[200];
    for (int i = 0; i < 200; i++) ids[i] = (int32_t)(rng_next(&g_rng) % 512);
    forward_case("tiny-qwen3/target", ids, 200);      /* the cuBLAS path when it is there */
    forward_case("tiny-qwen3/target-bf16", ids, 200);
}

/* GPU: prefill 24 then one token per forward == the one-shot 40-token forward, bitwise;
 * and two sequences in two slots in one flat batch */
static void incremental_on(Qwen3Model *m) {
    char err[DS_ERR_LEN];
    const int V = m->cfg.vocab_size;
    Qwen3State a, s;
    CHECK_OK(qwen3_state_init(&a, m, 40, 40, 0, 2, 64, err), err);
    CHECK_OK(qwen3_state_init(&s, m, 40, 40, 0, 2, 64, err), err);
    int32_t pos[40], rows[40];
    for (int i = 0; i < 40; i++) pos[i] = rows[i] = i;
    Qwen3Batch b = {.n = 40, .tokens = g_ids, .pos = pos, .logit_rows = rows, .n_logits = 40};
    CHECK_OK(qwen3_forward(m, &a, &b, err), err);
    int row = 23;
    Qwen3Batch p = {.n = 24, .tokens = g_ids, .pos = pos, .logit_rows = &row, .n_logits = 1};
    CHECK_OK(qwen3_forward(m, &s, &p, err), err);
    CHECK(memcmp(s.logits_host, a.logits_host + (size_t)23 * V, sizeof(float) * V) == 0);
    int same = 0;
    for (int i = 24; i < 40; i++) {
        int r0 = 0;
        Qwen3Batch one = {.n = 1, .tokens = g_ids + i, .pos = pos + i, .logit_rows = &r0, .n_logits = 1};
        CHECK_OK(qwen3_forward(m, &s, &one, err), err);
        same += memcmp(s.logits_host, a.logits_host + (size_t)i * V, sizeof(float) * V) == 0;
    }
    CHECK_MSG(same == 16, "incremental decoding: %d of 16 rows bitwise equal to the one-shot forward", same);
    /* slot 1 gets ids[10..19] at positions 0..9; then one flat batch of two sequences: slot 0
     * re-feeds ids[24] at 24 (its logits: row 24 of the one-shot forward), slot 1 goes on at 10 */
    Qwen3Batch q = {.n = 10, .tokens = g_ids + 10, .pos = pos, .slot = (int32_t[]){1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, .logit_rows = &row, .n_logits = 0};
    CHECK_OK(qwen3_forward(m, &s, &q, err), err);
    int32_t toks[2] = {g_ids[24], g_ids[0]}, ps[2] = {24, 10}, sl[2] = {0, 1}, lr[2] = {0, 1};
    Qwen3Batch mix = {.n = 2, .tokens = toks, .pos = ps, .slot = sl, .logit_rows = lr, .n_logits = 2};
    CHECK_OK(qwen3_forward(m, &s, &mix, err), err);
    CHECK(memcmp(s.logits_host, a.logits_host + (size_t)24 * V, sizeof(float) * V) == 0);
    qwen3_state_free(&a, m);
    qwen3_state_free(&s, m);
}

static void test_incremental_bitwise(void) {
    incremental_on(&g_tg);
    /* the BF16 checkpoint: the tensor-core product on the GPU */
    char err[DS_ERR_LEN];
    Qwen3Model m;
    CHECK_OK(qwen3_load(&m, test_data("tiny-qwen3/target-bf16"), g_gpu, err), err);
    incremental_on(&m);
    qwen3_free(&m);
}

#ifdef DSPARK_HAVE_CUDA
/* Two GPU backends give bitwise the same forwards: a 24-token prefill (logits and every
 * layer's features) and 16 single-token steps after it (which read the KV rows the prefill
 * wrote; eager, captured, then replayed from a step graph). */
static void same_forwards(const char *dir, Backend *be, Backend *sep, const char *what) {
    char err[DS_ERR_LEN];
    Qwen3Model m, ms;
    CHECK_OK(qwen3_load(&m, test_data(dir), be, err), err);
    CHECK_OK(qwen3_load(&ms, test_data(dir), sep, err), err);
    const int V = m.cfg.vocab_size, d = m.cfg.hidden_size, nl = m.cfg.n_layers;
    int feats[16], nf = 0;
    feats[nf++] = -1;
    for (int l = 0; l < nl; l++) feats[nf++] = l;
    Qwen3State sf, ss;
    CHECK_OK(qwen3_state_init(&sf, &m, 24, 24, nf, 1, 64, err), err);
    CHECK_OK(qwen3_state_init(&ss, &ms, 24, 24, nf, 1, 64, err), err);
    int32_t pos[40], rows[24];
    for (int i = 0; i < 40; i++) pos[i] = i;
    for (int i = 0; i < 24; i++) rows[i] = i;
    int same = 0, steps = 0;
    for (int k = 0; k < 17; k++) {
        const int start = k == 0 ? 0 : 23 + k, n = k == 0 ? 24 : 1;
        Qwen3Batch b = {.n = n, .tokens = g_ids + start, .pos = pos + start, .logit_rows = rows, .n_logits = n,
                        .feature_layers = feats, .n_feature_layers = k == 0 ? nf : 0};
        CHECK_OK(qwen3_forward(&m, &sf, &b, err), err);
        CHECK_OK(qwen3_forward(&ms, &ss, &b, err), err);
        bool eq = memcmp(sf.logits_host, ss.logits_host, sizeof(float) * (size_t)n * V) == 0;
        if (k == 0) {
            float *ff = host_from(sf.features, (size_t)24 * nf * d), *fs = malloc(sizeof(float) * (size_t)24 * nf * d);
            sep->to_host(sep, fs, ss.features, sizeof(float) * (size_t)24 * nf * d);
            eq = eq && memcmp(ff, fs, sizeof(float) * (size_t)24 * nf * d) == 0;
            free(ff); free(fs);
        }
        same += eq;
        steps++;
    }
    CHECK_MSG(same == steps, "%s: %s: %d of %d forwards bitwise equal", dir, what, same, steps);
    printf("  %s: %s: bitwise equal in %d of %d forwards\n", dir, what, same, steps);
    qwen3_state_free(&sf, &m);
    qwen3_state_free(&ss, &ms);
    qwen3_free(&m);
    qwen3_free(&ms);
}

/* the fused ops and fusions (qk_norm_rope_kv, add_rmsnorm, attention's merge in its last
 * block) of the default backend against a DSPARK_CUDA_FUSE=0 backend (the separate ops) */
static void test_fused_ops(void) {
    const bool was_on = g_gpu->qk_norm_rope_kv != NULL, was_fold = g_gpu->matmul_norm != NULL;
    backend_cuda_set_fused(g_gpu, true, false); /* (the folded norms change bits: test_matmul_fold) */
    Backend *sep = gpu_with_env("DSPARK_CUDA_FUSE", "0", NULL, NULL);
    if (sep) {
        CHECK_MSG(sep->qk_norm_rope_kv == NULL && sep->add_rmsnorm == NULL && sep->matmul_norm == NULL && sep->matmul_add == NULL,
                  "DSPARK_CUDA_FUSE=0 should leave the fused ops out");
        same_forwards("tiny-qwen3/target", g_gpu, sep, "fused ops vs the separate ones");
        same_forwards("tiny-qwen3/target-bf16", g_gpu, sep, "fused ops vs the separate ones");
        sep->destroy(sep);
    }
    backend_cuda_set_fused(g_gpu, was_on, was_fold);
}

/* qk_norm_rope_kv op by op against the separate ops (rmsnorm of the heads, rope, kv_write)
 * for head_dim 64, 128, 256 (the head in registers) and 48 (the generic path), F32 and BF16
 * norms: q, k and the cache bitwise equal */
static void test_qk_norm_rope_kv(void) {
    Backend *sep = gpu_with_env("DSPARK_CUDA_FUSE", "0", NULL, NULL);
    if (!sep || !g_gpu->qk_norm_rope_kv) {
        if (sep) sep->destroy(sep);
        return;
    }
    const int hds[] = {64, 128, 256, 48};
    for (int c = 0; c < 8; c++) {
        const int hd = hds[c % 4], dt = c / 4 ? DS_BF16 : DS_F32, H = 8, KV = 2, n = 5, L = 2, S = 2, T = 64;
        const size_t nq = (size_t)n * H * hd, nk = (size_t)n * KV * hd, kvn = (size_t)L * S * T * KV * hd;
        float *q = rand_f32(nq, 2.0f), *k = rand_f32(nk, 2.0f), *v = rand_f32(nk, 1.0f), *qw = rand_f32(hd, 1.0f), *kw = rand_f32(hd, 1.0f);
        void *qwh = to_dtype(qw, hd, dt), *kwh = to_dtype(kw, hd, dt);
        Weight cq = weight_view(qwh, dt, 1, hd), ck = weight_view(kwh, dt, 1, hd), gq = gpu_weight(&cq), gk = gpu_weight(&ck);
        int32_t slot[5] = {0, 1, 1, 0, 1}, pos[5] = {3, 0, 1, 40, 63};
        float *r[2][5]; /* per backend: q, k, cache k, cache v */
        Backend *bes[2] = {g_gpu, sep};
        for (int b = 0; b < 2; b++) {
            Backend *be = bes[b];
            float *dq = dev_from(q, sizeof(float) * nq), *dk = dev_from(k, sizeof(float) * nk), *dv = dev_from(v, sizeof(float) * nk);
            int32_t *ds = dev_from(slot, sizeof slot), *dp = dev_from(pos, sizeof pos);
            KvCache kv = {g_gpu->alloc(g_gpu, sizeof(float) * kvn), g_gpu->alloc(g_gpu, sizeof(float) * kvn), L, S, T, KV * hd};
            g_gpu->synchronize(g_gpu);
            if (be->qk_norm_rope_kv) be->qk_norm_rope_kv(be, dq, dk, dv, &gq, &gk, 1e-6f, &kv, 1, ds, dp, n, H, KV, hd, 1e6f);
            else {
                be->rmsnorm(be, dq, dq, &gq, n * H, hd, 1e-6f);
                be->rmsnorm(be, dk, dk, &gk, n * KV, hd, 1e-6f);
                be->rope(be, dq, dp, n, H, hd, 1e6f);
                be->rope(be, dk, dp, n, KV, hd, 1e6f);
                be->kv_write(be, &kv, 1, dk, dv, ds, dp, n);
            }
            be->synchronize(be);
            r[b][0] = host_from(dq, nq);
            r[b][1] = host_from(dk, nk);
            r[b][2] = host_from(kv.k, kvn);
            r[b][3] = host_from(kv.v, kvn);
            void *dev[] = {dq, dk, dv, ds, dp, kv.k, kv.v};
            for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) g_gpu->free(g_gpu, dev[i]);
        }
        const bool same = !memcmp(r[0][0], r[1][0], sizeof(float) * nq) && !memcmp(r[0][1], r[1][1], sizeof(float) * nk) &&
                          !memcmp(r[0][2], r[1][2], sizeof(float) * kvn) && !memcmp(r[0][3], r[1][3], sizeof(float) * kvn);
        CHECK_MSG(same, "qk_norm_rope_kv head_dim %d %s: differs from the separate ops", hd, dt == DS_BF16 ? "BF16" : "F32");
        for (int b = 0; b < 2; b++)
            for (int j = 0; j < 4; j++) free(r[b][j]);
        g_gpu->release_weight(g_gpu, &gq);
        g_gpu->release_weight(g_gpu, &gk);
        free(q); free(k); free(v); free(qw); free(kw); free(qwh); free(kwh);
    }
    printf("  qk_norm_rope_kv: bitwise the separate ops at head_dim 64, 128, 256, 48 (F32 and BF16 norms)\n");
    sep->destroy(sep);
}

/* programmatic dependent launch (every kernel may start before the one before it ends and
 * waits for its inputs) against plain stream order, fused and separate ops; attention's L2
 * prefetch before its wait against none */
static void test_pdl(void) {
    const char *pairs[][2] = {{"DSPARK_CUDA_PDL=1", "DSPARK_CUDA_PDL=0"},
                              {"DSPARK_CUDA_PDL=1 DSPARK_CUDA_FUSE=0", "DSPARK_CUDA_PDL=0 DSPARK_CUDA_FOLD=0"},
                              {"DSPARK_CUDA_PDL=1", "DSPARK_CUDA_PDL=1 DSPARK_CUDA_ATT_PREFETCH=0"},
                              {"DSPARK_CUDA_TILES=1", "DSPARK_CUDA_TILES=0"}};
    for (int k = 0; k < 4; k++) {
        Backend *a = gpu_with_envs(pairs[k][0]), *b = gpu_with_envs(pairs[k][1]);
        if (a && b) {
            char what[96];
            snprintf(what, sizeof what, "%s vs %s", pairs[k][0], pairs[k][1]);
            same_forwards("tiny-qwen3/target", a, b, what);
            same_forwards("tiny-qwen3/target-bf16", a, b, what);
        }
        if (a) a->destroy(a);
        if (b) b->destroy(b);
    }
}
#endif

/* ---- drafters ---- */

static void drafter_case(const char *dir) {
    char err[DS_ERR_LEN], name[128];
    Drafter dc, dg;
    CHECK_OK(drafter_load(&dc, test_data(dir), &g_tc, g_cpu, err), err);
    CHECK_OK(drafter_load(&dg, test_data(dir), &g_tg, g_gpu, err), err);
    if (!dc.layers || !dg.layers) return;
    const int B = dc.cfg.block_size, D = dc.cfg.base.hidden_size, V = dc.cfg.base.vocab_size, m = dc.cfg.n_target_layers, P = 24;
    /* target features of ids[:P] on each backend */
    Qwen3State tc, tg;
    CHECK_OK(qwen3_state_init(&tc, &g_tc, P, 1, m, 1, 64, err), err);
    CHECK_OK(qwen3_state_init(&tg, &g_tg, P, 1, m, 1, 64, err), err);
    int32_t pos[40], row = P - 1;
    for (int i = 0; i < 40; i++) pos[i] = i;
    Qwen3Batch b = {.n = P, .tokens = g_ids, .pos = pos, .logit_rows = &row, .n_logits = 1, .feature_layers = dc.cfg.target_layer_ids,
                    .n_feature_layers = m};
    CHECK_OK(qwen3_forward(&g_tc, &tc, &b, err), err);
    CHECK_OK(qwen3_forward(&g_tg, &tg, &b, err), err);
    DraftState sc, sg;
    CHECK_OK(draft_state_init(&sc, &dc, 64, 16, err), err); /* chunk 16 < 24: two append calls */
    CHECK_OK(draft_state_init(&sg, &dg, 64, 16, err), err);
    CHECK_OK(drafter_append_context(&dc, &sc, tc.features, P, 0, err), err);
    CHECK_OK(drafter_append_context(&dg, &sg, tg.features, P, 0, err), err);
    CHECK_OK(drafter_block(&dc, &sc, g_ids[P], P, err), err);
    CHECK_OK(drafter_block(&dg, &sg, g_ids[P], P, err), err);
    drafter_all_logits(&dc, &sc);
    drafter_all_logits(&dg, &sg);
    float *h = host_from(sg.hidden, (size_t)B * D), *bl = host_from(sg.base_logits, (size_t)B * V);
    snprintf(name, sizeof name, "%s hidden", dir);
    CHECK_NSE(name, h, sc.hidden, (size_t)B * D, NSE_F32);
    snprintf(name, sizeof name, "%s base logits", dir);
    CHECK_NSE(name, bl, sc.base_logits, (size_t)B * V, NSE_F32);
    float *lc = malloc(sizeof(float) * B * V), *lg = malloc(sizeof(float) * B * V), cc[64], cg[64];
    for (int j = 0; j < B; j++) { /* teacher-forced previous tokens, in order (the RNN state) */
        CHECK_OK(drafter_head(&dc, &sc, j, g_ids[P + j], &cc[j], err), err);
        CHECK_OK(drafter_head(&dg, &sg, j, g_ids[P + j], &cg[j], err), err);
        memcpy(lc + (size_t)j * V, sc.logits_host, sizeof(float) * V);
        memcpy(lg + (size_t)j * V, sg.logits_host, sizeof(float) * V);
    }
    snprintf(name, sizeof name, "%s slot logits", dir);
    CHECK_NSE(name, lg, lc, (size_t)B * V, NSE_F32);
    snprintf(name, sizeof name, "%s confidence", dir);
    if (dc.cfg.enable_confidence_head) CHECK_NSE(name, cg, cc, (size_t)B, NSE_F32);
    free(h); free(bl); free(lc); free(lg);
    draft_state_free(&sc, &dc);
    draft_state_free(&sg, &dg);
    qwen3_state_free(&tc, &g_tc);
    qwen3_state_free(&tg, &g_tg);
    drafter_free(&dc);
    drafter_free(&dg);
}

static void test_drafters(void) {
    const char *dirs[] = {"tiny-qwen3/draft-vanilla", "tiny-qwen3/draft-gated", "tiny-qwen3/draft-rnn", "tiny-qwen3/draft-dflash", "trained-draft"};
    for (int i = 0; i < 5; i++) drafter_case(dirs[i]);
}

/* ---- speculative decoding ---- */

#define CTX 160

/* independent plain greedy on the CPU: one token per forward */
static int cpu_greedy(const int32_t *prompt, int np, int max_new, int32_t *out) {
    char err[DS_ERR_LEN];
    Qwen3State st;
    CHECK_OK(qwen3_state_init(&st, &g_tc, CTX, 1, 0, 1, CTX, err), err);
    int32_t pos[CTX], seq[CTX], row;
    memcpy(seq, prompt, sizeof(int32_t) * np);
    for (int i = 0; i < CTX; i++) pos[i] = i;
    int n = 0, len = np, fed = 0;
    while (n < max_new && len < CTX) {
        row = len - fed - 1;
        Qwen3Batch b = {.n = len - fed, .tokens = seq + fed, .pos = pos + fed, .logit_rows = &row, .n_logits = 1};
        CHECK_OK(qwen3_forward(&g_tc, &st, &b, err), err);
        fed = len;
        seq[len++] = out[n++] = argmax_f32(st.logits_host, g_tc.cfg.vocab_size);
    }
    qwen3_state_free(&st, &g_tc);
    return n;
}

/* prompts as test_spec.c draws them (the same cases for the same seed) */
static void spec_case(const char *dir, int n_cases, uint64_t seed, int min_new, int span_new, bool want_all_kinds) {
    char err[DS_ERR_LEN];
    Drafter d;
    DrafterSource ds;
    SpecDecoder sd;
    CHECK_OK(drafter_load(&d, test_data(dir), &g_tg, g_gpu, err), err);
    if (!d.layers) return;
    CHECK_OK(spec_drafter_source_init(&ds, &d, CTX, 16, err), err);
    CHECK_OK(spec_init(&sd, &g_tg, &ds.src, CTX, 16, err), err);
    const int block = d.cfg.block_size;
    int zero = 0, partial = 0, full = 0, rounds = 0, tau = 0, same = 0;
    Rng r;
    rng_seed(&r, seed, 0);
    for (int c = 0; c < n_cases; c++) {
        int32_t prompt[40], ref[CTX], got[CTX];
        int np = 1 + (int)(rng_next(&r) % 30), max_new = min_new + (int)(rng_next(&r) % (uint64_t)span_new), ngot = 0;
        for (int i = 0; i < np; i++) prompt[i] = (int32_t)(rng_next(&r) % (uint64_t)(g_tc.cfg.vocab_size - 1));
        int nref = cpu_greedy(prompt, np, max_new, ref);
        SpecParams p = {.sampler = {0.0f, 0, 1.0f}, .seed = 1, .max_new = max_new};
        SpecStats st;
        CHECK_OK(spec_generate(&sd, prompt, np, &p, got, &ngot, &st, err), err);
        bool ok = ngot == nref && memcmp(got, ref, sizeof(int32_t) * nref) == 0;
        same += ok;
        CHECK_MSG(ok, "%s case %d (prompt %d, max %d): GPU speculative tokens differ from the CPU's", dir, c, np, max_new);
        zero += st.rounds - st.accepted_at[0];
        full += st.accepted_at[block - 1];
        partial += st.accepted_at[0] - st.accepted_at[block - 1];
        rounds += st.rounds;
        tau += st.tau_sum;
    }
    printf("  spec %-26s %d/%d cases token-identical to CPU greedy; %d rounds, tau %.2f; zero %d partial %d full %d\n", dir, same,
           n_cases, rounds, rounds ? (double)tau / rounds : 0.0, zero, partial, full);
    if (want_all_kinds) CHECK(zero > 0 && partial > 0 && full > 0);
    spec_free(&sd);
    spec_drafter_source_free(&ds);
    drafter_free(&d);
}

#ifdef DSPARK_HAVE_CUDA
/* GPU: decode and verify steps replayed from step graphs give bitwise the logits of the same
 * steps run op by op (graph hooks off), and the records are replayed (not re-captured) */
static void test_graph_replay(void) {
    if (!g_gpu->graph_begin) {
        printf("  step graphs off (DSPARK_CUDA_GRAPHS=0)\n");
        return;
    }
    char err[DS_ERR_LEN];
    const int V = g_tg.cfg.vocab_size;
    Qwen3State sg, se;
    CHECK_OK(qwen3_state_init(&sg, &g_tg, 8, 8, 0, 1, 64, err), err);
    CHECK_OK(qwen3_state_init(&se, &g_tg, 8, 8, 0, 1, 64, err), err);
    long c0, r0, m0, c1, r1, m1;
    backend_cuda_graph_stats(g_gpu, &c0, &r0, &m0);
    void (*gb)(Backend *, int) = g_gpu->graph_begin;
    bool (*ge)(Backend *) = g_gpu->graph_end;
    int32_t pos[40], rows[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    for (int i = 0; i < 40; i++) pos[i] = i;
    /* prefill 8, 16 single tokens, then verify blocks of 4 */
    int starts[32], lens[32], ns = 0, p = 0;
    starts[ns] = p; lens[ns++] = 8; p += 8;
    for (int i = 0; i < 16; i++) { starts[ns] = p; lens[ns++] = 1; p += 1; }
    for (int i = 0; i < 4; i++) { starts[ns] = p; lens[ns++] = 4; p += 4; }
    int same = 0;
    for (int k = 0; k < ns; k++) {
        Qwen3Batch b = {.n = lens[k], .tokens = g_ids + starts[k], .pos = pos + starts[k], .logit_rows = rows, .n_logits = lens[k]};
        CHECK_OK(qwen3_forward(&g_tg, &sg, &b, err), err);
        g_gpu->graph_begin = NULL;
        g_gpu->graph_end = NULL;
        CHECK_OK(qwen3_forward(&g_tg, &se, &b, err), err);
        g_gpu->graph_begin = gb;
        g_gpu->graph_end = ge;
        same += memcmp(sg.logits_host, se.logits_host, sizeof(float) * (size_t)lens[k] * V) == 0;
    }
    backend_cuda_graph_stats(g_gpu, &c1, &r1, &m1);
    CHECK_MSG(same == ns, "step graphs: %d of %d steps bitwise equal to the op-by-op run", same, ns);
    /* keys 8 (prefill, once), 1 (16 steps: eager, captured, 14 replays), 4 (eager, captured, 2) */
    CHECK_MSG(r1 - r0 >= 16, "step graphs: %ld replays, %ld captures, %ld misses", r1 - r0, c1 - c0, m1 - m0);
    printf("  step graphs: %d steps equal; %ld captured, %ld replayed, %ld misses\n", same, c1 - c0, r1 - r0, m1 - m0);
    qwen3_state_free(&sg, &g_tg);
    qwen3_state_free(&se, &g_tg);
}
#endif

#ifdef DSPARK_HAVE_CUDA
/* GPU: the drafter's block and slot heads as step graphs give bitwise the outputs of the same
 * calls op by op (graph hooks off, as DSPARK_CUDA_GRAPHS=0), over rounds that repeat a block
 * (replays), move it (appended context: replays read the new positions), use the host path
 * (drafter_head) and the device path (drafter_head_dev, previous tokens in GPU memory), and
 * stop early (slots past LOGITS_FIRST not reached: the lm_head rows on demand) */
static void drafter_graph_case(const char *dir) {
    char err[DS_ERR_LEN];
    Drafter d;
    CHECK_OK(drafter_load(&d, test_data(dir), &g_tg, g_gpu, err), err);
    if (!d.layers) return;
    const int B = d.cfg.block_size, D = d.cfg.base.hidden_size, V = d.cfg.base.vocab_size, m = d.cfg.n_target_layers, P = 16, NF = 24;
    Qwen3State ts;
    CHECK_OK(qwen3_state_init(&ts, &g_tg, NF, 1, m, 1, 64, err), err);
    int32_t pos[40], row = NF - 1;
    for (int i = 0; i < 40; i++) pos[i] = i;
    Qwen3Batch b = {.n = NF, .tokens = g_ids, .pos = pos, .logit_rows = &row, .n_logits = 1, .feature_layers = d.cfg.target_layer_ids,
                    .n_feature_layers = m};
    CHECK_OK(qwen3_forward(&g_tg, &ts, &b, err), err);
    void (*gb)(Backend *, int) = g_gpu->graph_begin;
    bool (*ge)(Backend *) = g_gpu->graph_end;
    DraftState st[2]; /* 0: step graphs, 1: op by op */
    int32_t *tok[2];
    float *cdev[2];
    for (int k = 0; k < 2; k++) {
        CHECK_OK(draft_state_init(&st[k], &d, 64, 16, err), err);
        CHECK_OK(drafter_append_context(&d, &st[k], ts.features, P, 0, err), err);
        tok[k] = g_gpu->alloc(g_gpu, sizeof(int32_t) * (size_t)(B + 1));
        cdev[k] = g_gpu->alloc(g_gpu, sizeof(float) * (size_t)B);
    }
    const size_t fcols = (size_t)m * D;
    float *out[2];
    for (int k = 0; k < 2; k++) out[k] = malloc(sizeof(float) * ((size_t)B * (D + 2 * V) + 2 * B));
    long c0, r0, m0, c1, r1, m1;
    backend_cuda_graph_stats(g_gpu, &c0, &r0, &m0);
    int same = 0, rounds = 0;
    for (int r = 0; r < 12; r++) {
        const int start = P + r / 3;          /* each block three times, then one more position */
        const bool dev = r % 2 == 1;           /* alternate host and device head paths */
        const int slots = r % 4 == 2 ? 2 : B;  /* an early stop */
        for (int k = 0; k < 2; k++) {
            DraftState *s = &st[k];
            if (k == 1) { g_gpu->graph_begin = NULL; g_gpu->graph_end = NULL; }
            float *o = out[k], *lg = o + (size_t)B * D, *bl = lg + (size_t)B * V, *cf = bl + (size_t)B * V;
            memset(o, 0, sizeof(float) * ((size_t)B * (D + 2 * V) + 2 * B));
            CHECK_OK(drafter_block(&d, s, g_ids[start], start, err), err);
            g_gpu->to_device(g_gpu, tok[k], g_ids + start, sizeof(int32_t) * (size_t)(B + 1)); /* teacher-forced previous tokens */
            for (int j = 0; j < slots; j++) {
                if (dev) {
                    CHECK_OK(drafter_head_dev(&d, s, j, tok[k] + j, cdev[k], err), err);
                    g_gpu->to_host(g_gpu, lg + (size_t)j * V, s->logits, sizeof(float) * (size_t)V);
                    if (d.cfg.enable_confidence_head) g_gpu->to_host(g_gpu, cf + j, cdev[k], sizeof(float));
                } else {
                    CHECK_OK(drafter_head(&d, s, j, g_ids[start + j], cf + j, err), err);
                    memcpy(lg + (size_t)j * V, s->logits_host, sizeof(float) * (size_t)V);
                }
            }
            g_gpu->to_host(g_gpu, o, s->hidden, sizeof(float) * (size_t)B * D);
            g_gpu->to_host(g_gpu, bl, s->base_logits, sizeof(float) * (size_t)s->logits_ready * V);
            if (r % 3 == 2) CHECK_OK(drafter_append_context(&d, s, ts.features + (size_t)start * fcols, 1, start, err), err);
            g_gpu->graph_begin = gb;
            g_gpu->graph_end = ge;
        }
        const bool eq = memcmp(out[0], out[1], sizeof(float) * ((size_t)B * (D + 2 * V) + 2 * B)) == 0;
        CHECK_MSG(eq, "%s round %d (block at %d, %s heads, %d slots): step graphs differ from op by op", dir, r, start, dev ? "device" : "host",
                  slots);
        same += eq;
        rounds++;
    }
    backend_cuda_graph_stats(g_gpu, &c1, &r1, &m1);
    /* per key (block, slot j) a first eager run, a capture per argument list, then replays */
    CHECK_MSG(r1 - r0 >= 12 * (B + 1) / 2, "%s: drafter step graphs: %ld replays, %ld captures, %ld misses", dir, r1 - r0, c1 - c0, m1 - m0);
    printf("  %-26s drafter step graphs: %d of %d rounds bitwise equal to op by op; %ld captured, %ld replayed, %ld misses\n", dir, same,
           rounds, c1 - c0, r1 - r0, m1 - m0);
    for (int k = 0; k < 2; k++) {
        free(out[k]);
        g_gpu->free(g_gpu, tok[k]);
        g_gpu->free(g_gpu, cdev[k]);
        draft_state_free(&st[k], &d);
    }
    qwen3_state_free(&ts, &g_tg);
    drafter_free(&d);
}

static void test_drafter_graphs(void) {
    if (!g_gpu->graph_begin) {
        printf("  step graphs off (DSPARK_CUDA_GRAPHS=0)\n");
        return;
    }
    const char *dirs[] = {"tiny-qwen3/draft-vanilla", "tiny-qwen3/draft-gated", "tiny-qwen3/draft-rnn", "tiny-qwen3/draft-dflash", "trained-draft"};
    for (int i = 0; i < 5; i++) drafter_graph_case(dirs[i]);
}
#endif

static void test_spec_greedy(void) {
    spec_case("trained-draft", 12, 13, 16, 48, true); /* test_greedy_trained_drafter's cases */
    spec_case("tiny-qwen3/draft-vanilla", 6, 11, 1, 40, false);
    spec_case("tiny-qwen3/draft-gated", 6, 11, 1, 40, false);
    spec_case("tiny-qwen3/draft-rnn", 6, 11, 1, 40, false);
    spec_case("tiny-qwen3/draft-dflash", 6, 11, 1, 40, false);
    /* plain decoding through the same loop on the GPU */
    char err[DS_ERR_LEN];
    SpecDecoder sd;
    CHECK_OK(spec_init(&sd, &g_tg, NULL, CTX, 16, err), err);
    int32_t prompt[12] = {3, 14, 15, 92, 65, 35, 89, 79, 323, 84, 62, 64}, ref[CTX], got[CTX];
    int nref = cpu_greedy(prompt, 12, 60, ref), ngot = 0;
    SpecParams p = {.sampler = {0.0f, 0, 1.0f}, .seed = 1, .max_new = 60};
    SpecStats st;
    CHECK_OK(spec_generate(&sd, prompt, 12, &p, got, &ngot, &st, err), err);
    CHECK(ngot == nref && memcmp(got, ref, sizeof(int32_t) * nref) == 0);
    spec_free(&sd);
}

/* DSPARK_TEST_ONLY=name,name: only those tests (e.g. a short compute-sanitizer run) */
static bool want(const char *fn) {
    const char *only = getenv("DSPARK_TEST_ONLY");
    if (!only || !only[0]) return true;
    const size_t n = strlen(fn);
    for (const char *p = strstr(only, fn); p; p = strstr(p + 1, fn))
        if ((p == only || p[-1] == ',') && (p[n] == ',' || !p[n])) return true;
    return false;
}
#define RUN_IF(fn) do { if (want(#fn)) RUN(fn); } while (0)

int main(void) {
    char err[DS_ERR_LEN] = "";
    const char *req = getenv("DSPARK_REQUIRE_CUDA");
    bool require = req && strcmp(req, "1") == 0;
    if (backend_create("cuda", 1, &g_gpu, err) != DS_OK) {
        /* the error is one line and says what is missing */
        bool one_line = err[0] && !strchr(err, '\n');
        printf("%s: %s\n", require ? "FAIL (DSPARK_REQUIRE_CUDA=1)" : "SKIP", err);
        if (!one_line) { printf("error message is not one line\n"); return 1; }
        return require ? 1 : 77;
    }
#ifdef DSPARK_HAVE_CUDA
    printf("device: %s\n", backend_cuda_info(g_gpu));
#endif
    g_cpu = backend_cpu_create(1);
#ifdef DSPARK_HAVE_CUDA
    g_rows = gpu_with_envs("DSPARK_CUDA_TILES=0");
    g_noblas = gpu_with_envs("DSPARK_CUDA_CUBLAS=0");
    if (!g_rows || !g_noblas) return test_summary();
#endif
    rng_seed(&g_rng, 2026, 7);
    load_ids();
    RUN_IF(test_matmul);
#ifdef DSPARK_HAVE_CUDA
    RUN_IF(test_matmul_vs_reference);
    RUN_IF(test_matmul_tc);
#endif
    RUN_IF(test_matmul_multi);
    RUN_IF(test_matmul_fold);
#ifdef DSPARK_HAVE_CUDA
    RUN_IF(test_matmul_pieces);
    RUN_IF(test_norm_pieces);
#endif
    RUN_IF(test_rmsnorm);
    RUN_IF(test_rope);
    RUN_IF(test_attention);
    RUN_IF(test_elementwise);
    if (qwen3_load(&g_tc, test_data("tiny-qwen3/target"), g_cpu, err) || qwen3_load(&g_tg, test_data("tiny-qwen3/target"), g_gpu, err)) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    RUN_IF(test_forward);
    RUN_IF(test_incremental_bitwise);
#ifdef DSPARK_HAVE_CUDA
    RUN_IF(test_fused_ops);
    RUN_IF(test_qk_norm_rope_kv);
    RUN_IF(test_pdl);
    RUN_IF(test_graph_replay);
#endif
    RUN_IF(test_drafters);
#ifdef DSPARK_HAVE_CUDA
    RUN_IF(test_drafter_graphs);
#endif
    RUN_IF(test_spec_greedy);
    printf("worst nse among passing checks: %.3g (bound %.0e)\n", g_worst_nse, NSE_F32);
    qwen3_free(&g_tc);
    qwen3_free(&g_tg);
    g_cpu->destroy(g_cpu);
    if (g_rows) g_rows->destroy(g_rows);
    if (g_noblas) g_noblas->destroy(g_noblas);
    g_gpu->destroy(g_gpu);
    return test_summary();
}
