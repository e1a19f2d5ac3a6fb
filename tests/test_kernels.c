/* test_kernels.c - the kernels (kernels*.c) on their own, on EVERY path this CPU supports
 * (portable, avx2, avx512: kern_set_path). Matmul: every output row must be
 * bitwise independent of the batch it is in (n = 1..3 goes through the decode kernel, n >= 4
 * through the prefill tiles) and of the thread count, for BF16, F16 and F32 weights, shapes
 * with K and O tails and several k blocks, and weights at the 8-byte alignment safetensors
 * gives; and every value must be within a stated bound of a double-precision reference:
 *   F32 activations: |out - ref| <= (K/16 + 8) 2^-23 sum_k |x_k w_k|  (16 lanes of K/16 FMAs,
 *                    then a 4-level tree: a standard summation bound with margin 2)
 *   BF16 activations (opt-in): |out - ref| <= 2^-7 sum_k |x_k w_k|  (x rounded to BF16: 2^-9
 *                    per product, plus the F32 accumulation, with margin); on the AMX path
 *                    (oneDNN, where available) the same bound for every batch and thread
 *                    count, row independence not required; must fail there: the F32 bound
 *                    (the batch really is BF16) and a weight corrupted by 0.5
 * Attention: a query's output bitwise the same alone, in a batch of 9 (two slots, kv_len 1..120)
 * and under 1 or 2 threads, for head_dim 16, 64, 128 and 24 (no vector path: portable), and
 *   |out - ref| <= 2^-20 max_j |v_j|  (per element, j over the query's keys; measured at most
 *                 0.21 of it on the portable and avx2 paths: margin ~5)
 * Elementwise: rope and add bitwise the scalar float expressions (two roundings, no FMA);
 * swiglu and rmsnorm within 2^-20 relative of double, and swiglu of a range bitwise the same
 * as inside a longer call; kern_dot_f32 within the matmul bound.
 * A copy of a result with one value moved past the bound must fail the check.
 * ctest: labels=unit */
#include <omp.h>

#include "kernels.h"
#include "sample.h"
#include "test.h"

typedef struct {
    int O, K;
} Shape;

static const Shape g_shapes[] = {{37, 100}, {100, 1072}, {70, 2100}, {300, 64}, {19, 3000}};
static const int g_ns[] = {1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17, 40, 130}; /* 130: several row blocks at K 3000 */

/* weights at an address 8 mod 64, as tensors in a safetensors file often are */
static void *alloc_misaligned(size_t bytes, void **base) {
    *base = ds_malloc_aligned(bytes + 64);
    return (char *)*base + 8;
}

static double wval(const Weight *w, size_t i) {
    switch (w->dtype) {
    case DS_BF16: return ds_bf16_to_f32(((const uint16_t *)w->host)[i]);
    case DS_F16: return ds_f16_to_f32(((const uint16_t *)w->host)[i]);
    default: return ((const float *)w->host)[i];
    }
}

/* max over outputs of |out - ref| / bound, bound = scale * sum|x w| (+ a denormal floor) */
static double worst_ratio(const float *out, const float *x, const Weight *w, int n, double per_sum) {
    double worst = 0;
    for (int i = 0; i < n; i++)
        for (int o = 0; o < w->rows; o++) {
            double ref = 0, mag = 0;
            for (int k = 0; k < w->cols; k++) {
                double p = (double)x[(size_t)i * w->cols + k] * wval(w, (size_t)o * w->cols + k);
                ref += p;
                mag += fabs(p);
            }
            double r = fabs((double)out[(size_t)i * w->rows + o] - ref) / (per_sum * mag + 1e-30);
            if (!(r <= worst)) worst = r;
        }
    return worst;
}

/* one dtype, one shape: row independence over g_ns and 1 vs 2 threads, plus the bound */
/* amx: the AMX path (kern_set_amx on), which does not keep the row independence: then every
 * batch's values are checked against the bound instead, and whether the rows of batches of
 * >= KERN_AMX_MIN_ROWS rows came out bitwise equal is only counted (g_amx_same / g_amx_cmp) */
static int g_amx_same, g_amx_cmp;
static void check_case(ds_dtype dt, Shape s, bool bf16act, bool amx, Rng *rng) {
    const int O = s.O, K = s.K, nmax = 130;
    size_t esz = dt == DS_F32 ? 4 : 2;
    void *wbase;
    void *wd = alloc_misaligned((size_t)O * K * esz, &wbase);
    for (size_t i = 0; i < (size_t)O * K; i++) {
        float v = (float)(rng_uniform(rng) - 0.5) * 0.1f;
        if (dt == DS_BF16) ((uint16_t *)wd)[i] = ds_f32_to_bf16(v);
        else if (dt == DS_F16) ((uint16_t *)wd)[i] = ds_f32_to_f16(v);
        else ((float *)wd)[i] = v;
    }
    Weight w = weight_view(wd, dt, O, K);
    float *x = malloc(sizeof(float) * nmax * K), *single = malloc(sizeof(float) * nmax * O), *out = malloc(sizeof(float) * nmax * O);
    float *big = malloc(sizeof(float) * nmax * O);
    for (size_t i = 0; i < (size_t)nmax * K; i++) x[i] = (float)(rng_uniform(rng) * 2 - 1);
    omp_set_num_threads(2);
    for (int i = 0; i < nmax; i++) kern_matmul(single + (size_t)i * O, x + (size_t)i * K, &w, 1);
    double scale = bf16act ? 0x1p-7 : (K / 16.0 + 8) * 0x1p-23;
    if (amx) {
        kern_matmul(big, x, &w, nmax); /* the AMX reference batch for the bitwise count */
        double r = worst_ratio(big, x, &w, nmax, scale);
        CHECK_MSG(r <= 1.0, "%s: error %.3g of the bound (%d x %d, n %d)", kern_path_name(), r, O, K, nmax);
        for (size_t t = 0; t < sizeof g_ns / sizeof g_ns[0]; t++)
            for (int th = 1; th <= 2; th++) {
                int n = g_ns[t], i0 = (nmax - n) / 2;
                omp_set_num_threads(th);
                kern_matmul(out, x + (size_t)i0 * K, &w, n);
                bool same = !memcmp(out, big + (size_t)i0 * O, sizeof(float) * n * O);
                if (n >= KERN_AMX_MIN_ROWS) {
                    g_amx_cmp++;
                    g_amx_same += same;
                }
                if (same) continue; /* checked above */
                r = worst_ratio(out, x + (size_t)i0 * K, &w, n, scale);
                CHECK_MSG(r <= 1.0, "%s: error %.3g of the bound (%d x %d, n %d, threads %d)", kern_path_name(), r, O, K, n, th);
            }
    }
    int bad = 0;
    for (size_t t = 0; t < sizeof g_ns / sizeof g_ns[0] && !amx; t++)
        for (int th = 1; th <= 2; th++) {
            int n = g_ns[t];
            omp_set_num_threads(th);
            /* rows taken from the middle of x so that n rows start at different offsets */
            int i0 = (nmax - n) / 2;
            kern_matmul(out, x + (size_t)i0 * K, &w, n);
            if (memcmp(out, single + (size_t)i0 * O, sizeof(float) * n * O)) {
                if (!bad) fprintf(stderr, "  %s: dtype %d O %d K %d bf16act %d: n %d threads %d differs from the rows alone\n",
                                  kern_path_name(), (int)dt, O, K, (int)bf16act, n, th);
                bad = 1;
            }
        }
    CHECK_MSG(!bad, "%s: rows not bitwise independent of batch / threads (dtype %d, %d x %d, bf16act %d)", kern_path_name(), (int)dt, O,
              K, (int)bf16act);
    double r = worst_ratio(single, x, &w, nmax, scale);
    CHECK_MSG(r <= 1.0, "%s: error %.3g of the bound (dtype %d, %d x %d, bf16act %d)", kern_path_name(), r, (int)dt, O, K, (int)bf16act);
    /* must fail: one value moved by twice the bound */
    double mag = 0;
    for (int k = 0; k < K; k++) mag += fabs((double)x[k] * wval(&w, k));
    single[0] += (float)(2.5 * scale * mag);
    CHECK(worst_ratio(single, x, &w, 1, scale) > 1.0);
    if (amx) {
        /* must fail: the AMX batch is really BF16 (not within the F32 bound), and a corrupted
         * weight (one value of row 0 plus 0.5) shows through it */
        CHECK(worst_ratio(big, x, &w, nmax, (K / 16.0 + 8) * 0x1p-23) > 1.0);
        uint16_t *wc = wd;
        float w0 = ds_bf16_to_f32(wc[3]);
        wc[3] = ds_f32_to_bf16(w0 + 0.5f);
        kern_amx_release(); /* a reordered copy (kern_amx_set_reorder) would hide the change */
        kern_matmul(out, x, &w, nmax);
        wc[3] = ds_f32_to_bf16(w0);
        kern_amx_release();
        CHECK(worst_ratio(out, x, &w, nmax, scale) > 1.0);
    }
    omp_set_num_threads(2);
    free(x); free(single); free(out); free(big);
    ds_free_aligned(wbase);
}

static void test_matmul_f32_path(void) {
    Rng rng;
    rng_seed(&rng, 7, 0);
    kern_set_bf16_activations(false);
    ds_dtype dts[3] = {DS_BF16, DS_F16, DS_F32};
    for (int d = 0; d < 3; d++)
        for (size_t s = 0; s < sizeof g_shapes / sizeof g_shapes[0]; s++) check_case(dts[d], g_shapes[s], false, false, &rng);
}

static void test_matmul_bf16_activations(void) {
    if (!kern_set_bf16_activations(true)) {
        fprintf(stderr, "  (BF16-activation path unavailable: no AVX512_BF16 or DSPARK_KERNELS=portable; not tested)\n");
        return;
    }
    Rng rng;
    rng_seed(&rng, 8, 0);
    bool amx = kern_amx_on();
    kern_set_amx(false);
    CHECK(strcmp(kern_path_name(), "avx512+bf16act") == 0);
    for (size_t s = 0; s < sizeof g_shapes / sizeof g_shapes[0]; s++) check_case(DS_BF16, g_shapes[s], true, false, &rng);
    kern_set_amx(true);
    if (amx) {
        CHECK(kern_amx_on() && strcmp(kern_path_name(), "avx512+bf16act+amx") == 0);
        g_amx_same = g_amx_cmp = 0;
        /* oneDNN takes the in-place weights on AMX only for K % 32 == 0 (others: the vector
         * kernels, which the shapes above test): O and n tails, several k blocks */
        static const Shape amx_shapes[] = {{37, 64}, {100, 1088}, {70, 2112}, {300, 64}, {19, 3072}};
        long before = kern_amx_products();
        for (size_t s = 0; s < sizeof amx_shapes / sizeof amx_shapes[0]; s++) check_case(DS_BF16, amx_shapes[s], true, true, &rng);
        /* per shape at least n 16, 17, 40, 130 at 1 and 2 threads and 2 more (for n 9 and 13 oneDNN
         * offers a non-AMX kernel at 19 x 3072: those stay on the vector kernels) */
        CHECK(kern_amx_products() - before >= 5 * 10);
        /* the same with the weights reordered into oneDNN's layout (DSPARK_AMX_REORDER=1) */
        kern_amx_set_reorder(true);
        before = kern_amx_products();
        for (size_t s = 0; s < sizeof amx_shapes / sizeof amx_shapes[0]; s++) check_case(DS_BF16, amx_shapes[s], true, true, &rng);
        CHECK(kern_amx_products() - before >= 5 * 10);
        kern_amx_set_reorder(false);
        kern_amx_release();
        fprintf(stderr, "  amx (%s): %d of %d batches of >= %d rows bitwise equal to the %d-row batch's rows\n", kern_amx_impl(),
                g_amx_same, g_amx_cmp, KERN_AMX_MIN_ROWS, 130);
    } else
        fprintf(stderr, "  (AMX unavailable: no oneDNN, no AMX-BF16 or no OS permission; not tested)\n");
    kern_set_bf16_activations(false);
}

/* kern_matmul_multi (one parallel region for q/k/v, gate/up + swiglu) equals the separate
 * kern_matmul and kern_swiglu calls bitwise, on both activation paths */
static void matmul_multi_case(int K) {
    Rng rng;
    rng_seed(&rng, 9, 0);
    const int O[3] = {96, 40, 96}, ns[4] = {1, 3, 13, 20}; /* 13, 20: the AMX path where on (K 224) */
    void *base[3];
    Weight w[3];
    for (int j = 0; j < 3; j++) {
        uint16_t *d = alloc_misaligned((size_t)O[j] * K * 2, &base[j]);
        for (int i = 0; i < O[j] * K; i++) d[i] = ds_f32_to_bf16((float)(rng_uniform(&rng) - 0.5) * 0.2f);
        w[j] = weight_view(d, DS_BF16, O[j], K);
    }
    float *x = malloc(sizeof(float) * 20 * K), *a[3], *b[3];
    for (int i = 0; i < 20 * K; i++) x[i] = (float)(rng_uniform(&rng) * 4 - 2);
    for (int j = 0; j < 3; j++) { a[j] = malloc(sizeof(float) * 20 * O[j]); b[j] = malloc(sizeof(float) * 20 * O[j]); }
    for (int path = 0; path < 2; path++) {
        if (path == 1 && !kern_set_bf16_activations(true)) break;
        for (int t = 0; t < 4; t++)
            for (int th = 1; th <= 2; th++) {
                int n = ns[t];
                omp_set_num_threads(th);
                const Weight *ws[3] = {&w[0], &w[1], &w[2]};
                for (int j = 0; j < 3; j++) kern_matmul(a[j], x, &w[j], n);
                kern_matmul_multi(b, x, ws, 3, n, KERN_ACT_NONE);
                for (int j = 0; j < 3; j++)
                    CHECK_MSG(!memcmp(a[j], b[j], sizeof(float) * n * O[j]), "multi differs: path %d n %d threads %d weight %d", path, n, th, j);
                /* gate/up: weights 0 and 2 (equal rows) */
                const Weight *gu[2] = {&w[0], &w[2]};
                float *outs[2] = {b[0], b[2]};
                kern_swiglu(a[0], a[0], a[2], (size_t)n * O[0]);
                kern_matmul_multi(outs, x, gu, 2, n, KERN_ACT_SWIGLU);
                CHECK_MSG(!memcmp(a[0], b[0], sizeof(float) * n * O[0]), "multi+swiglu differs: path %d n %d threads %d", path, n, th);
            }
    }
    kern_set_bf16_activations(false);
    omp_set_num_threads(2);
    for (int j = 0; j < 3; j++) { free(a[j]); free(b[j]); ds_free_aligned(base[j]); }
    free(x);
}

static void test_matmul_multi(void) {
    long before = kern_amx_products();
    matmul_multi_case(200); /* K tails (vector kernels only: oneDNN's AMX wants K % 32 == 0) */
    matmul_multi_case(224);
    if (kern_set_bf16_activations(true) && kern_amx_on()) CHECK(kern_amx_products() - before >= 2 * 2 * 4); /* n 13, 20 x 2 threads x (3 + 1) */
    kern_set_bf16_activations(false);
}

/* ---- attention ---- */

static void test_attention(void) {
    Rng rng;
    rng_seed(&rng, 10, 0);
    const int hds[4] = {16, 64, 128, 24}, H = 4, Hkv = 2, L = 2, layer = 1, n_slots = 2, max_ctx = 120, n = 9;
    const int32_t lens[9] = {1, 5, 16, 17, 33, 100, 120, 47, 64}, slots[9] = {0, 1, 0, 1, 1, 0, 1, 0, 1};
    for (int t = 0; t < 4; t++) {
        const int hd = hds[t], kvd = Hkv * hd;
        const size_t kv_n = (size_t)L * n_slots * max_ctx * kvd, qn = (size_t)n * H * hd;
        float *k = malloc(sizeof(float) * kv_n), *v = malloc(sizeof(float) * kv_n), *q = malloc(sizeof(float) * qn);
        float *alone = malloc(sizeof(float) * qn), *out = malloc(sizeof(float) * qn);
        for (size_t i = 0; i < kv_n; i++) { k[i] = (float)(rng_uniform(&rng) * 2 - 1); v[i] = (float)(rng_uniform(&rng) * 2 - 1); }
        for (size_t i = 0; i < qn; i++) q[i] = (float)(rng_uniform(&rng) * 6 - 3); /* peaked and flat softmaxes */
        KvCache kv = {k, v, L, n_slots, max_ctx, kvd};
        omp_set_num_threads(2);
        for (int i = 0; i < n; i++)
            kern_attention(alone + (size_t)i * H * hd, q + (size_t)i * H * hd, &kv, layer, &slots[i], &lens[i], 1, H, Hkv, hd);
        for (int th = 1; th <= 2; th++) {
            omp_set_num_threads(th);
            kern_attention(out, q, &kv, layer, slots, lens, n, H, Hkv, hd);
            CHECK_MSG(!memcmp(out, alone, sizeof(float) * qn), "%s: attention hd %d: batch of %d, %d threads differs from the queries alone",
                      kern_path_name(), hd, n, th);
        }
        /* double reference, bound 2^-20 max|v| */
        double worst = 0;
        int wi = 0;
        for (int i = 0; i < n; i++)
            for (int h = 0; h < H; h++) {
                const float *qi = q + ((size_t)i * H + h) * hd;
                const size_t base = (((size_t)layer * n_slots + slots[i]) * max_ctx) * kvd + (size_t)(h / (H / Hkv)) * hd;
                double s[120], mx = -INFINITY, sum = 0;
                for (int j = 0; j < lens[i]; j++) {
                    double d = 0;
                    for (int e = 0; e < hd; e++) d += (double)qi[e] * k[base + (size_t)j * kvd + e];
                    s[j] = d / sqrt((double)hd);
                    if (s[j] > mx) mx = s[j];
                }
                for (int j = 0; j < lens[i]; j++) sum += (s[j] = exp(s[j] - mx));
                for (int e = 0; e < hd; e++) {
                    double ref = 0, vmax = 0;
                    for (int j = 0; j < lens[i]; j++) {
                        double vv = v[base + (size_t)j * kvd + e];
                        ref += s[j] / sum * vv;
                        if (fabs(vv) > vmax) vmax = fabs(vv);
                    }
                    size_t at = ((size_t)i * H + h) * hd + e;
                    double r = fabs((double)alone[at] - ref) / (0x1p-20 * vmax);
                    if (!(r <= worst)) { worst = r; wi = (int)at; }
                }
            }
        if (getenv("DSPARK_TEST_VERBOSE")) fprintf(stderr, "  %s attention hd %d: worst error %.3g of the bound\n", kern_path_name(), hd, worst);
        CHECK_MSG(worst <= 1.0, "%s: attention hd %d: error %.3g of the bound at %d", kern_path_name(), hd, worst, wi);
        /* must fail: the first query's output moved by 2.5 bounds (its one key: out = v_0) */
        double r0 = fabs((double)(alone[0] + (float)(2.5 * 0x1p-20)) - v[(((size_t)layer * n_slots + 0) * max_ctx) * kvd]) / 0x1p-20;
        CHECK(r0 > 1.0);
        free(k); free(v); free(q); free(alone); free(out);
    }
    omp_set_num_threads(2);
}

/* ---- argmax: the scalar loop's index on every path, with ties, NaNs, infinities, zeros ---- */

static int32_t argmax_ref(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[best]) best = i;
    return best;
}

static void test_argmax(void) {
    Rng rng;
    rng_seed(&rng, 5, 0);
    const int nmax = 2200;
    float *x = malloc(sizeof(float) * nmax);
    int bad = 0;
    for (int trial = 0; trial < 3000; trial++) {
        int n = 1 + (int)(rng_uniform(&rng) * (trial < 2000 ? 300 : nmax - 1));
        int kind = trial % 6;
        for (int i = 0; i < n; i++) {
            double u = rng_uniform(&rng);
            x[i] = kind == 0 ? (float)(u * 8 - 4)                       /* distinct values */
                 : kind == 1 ? (float)(int)(u * 5)                      /* many ties */
                 : kind == 2 ? (u < 0.1 ? NAN : (float)(u * 2))         /* NaNs (x[0] too, sometimes) */
                 : kind == 3 ? (u < 0.5 ? -INFINITY : (float)u)         /* -inf runs */
                 : kind == 4 ? (u < 0.5 ? 0.0f : -0.0f)                 /* signed zeros */
                 : -INFINITY;                                           /* all -inf */
        }
        if (kind == 2 && trial % 12 == 2) x[0] = NAN;
        if (kind == 1 && n > 3) x[n - 1] = 9;                           /* the max in the tail */
        int32_t a = kern_argmax_f32(x, n), b = argmax_ref(x, n);
        if (a != b && !bad) { fprintf(stderr, "  argmax n %d kind %d: %d, scalar %d\n", n, kind, a, b); bad = 1; }
    }
    CHECK_MSG(!bad, "%s: argmax differs from the scalar loop", kern_path_name());
    /* must fail: a reference that keeps the last of equal maxima differs on ties */
    for (int i = 0; i < 100; i++) x[i] = (float)(i % 3);
    int32_t last = 0;
    for (int i = 1; i < 100; i++) if (x[i] >= x[last]) last = i;
    CHECK(kern_argmax_f32(x, 100) != last);
    free(x);
}

/* ---- elementwise ops and the dot product ---- */

static void test_elementwise(void) {
    Rng rng;
    rng_seed(&rng, 11, 0);
    const size_t n = 2 * 4096 + 21;
    float *g = malloc(sizeof(float) * n), *u = malloc(sizeof(float) * n), *o = malloc(sizeof(float) * n), *p = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) { g[i] = (float)(rng_uniform(&rng) * 16 - 8); u[i] = (float)(rng_uniform(&rng) * 4 - 2); }
    /* swiglu: bound, and a range alone == inside the longer call */
    kern_swiglu(o, g, u, n);
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double ref = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
        double r = fabs(o[i] - ref) / (0x1p-20 * fabs(ref) + 1e-30);
        if (!(r <= worst)) worst = r;
    }
    CHECK_MSG(worst <= 1.0, "%s: swiglu error %.3g of the bound", kern_path_name(), worst);
    kern_swiglu(p, g, u, 13);
    kern_swiglu(p + 13, g + 13, u + 13, n - 13);
    CHECK_MSG(!memcmp(o, p, sizeof(float) * n), "%s: swiglu of a range differs from inside a longer call", kern_path_name());
    /* add and rope: bitwise the float expressions */
    memcpy(p, g, sizeof(float) * n);
    kern_add(p, u, n);
    bool same = true;
    for (size_t i = 0; i < n; i++) same &= p[i] == g[i] + u[i];
    CHECK_MSG(same, "%s: add differs from x + y", kern_path_name());
    const int heads = 3, hd = 40, half = hd / 2; /* half = 20: vector body and scalar tail */
    float cs[20], sn[20];
    for (int j = 0; j < half; j++) { cs[j] = cosf(0.3f * (float)j); sn[j] = sinf(0.3f * (float)j); }
    memcpy(p, g, sizeof(float) * heads * hd);
    kern_rope_apply(p, cs, sn, heads, hd);
    same = true;
    for (int h = 0; h < heads; h++)
        for (int j = 0; j < half; j++) {
            float a = g[h * hd + j], b = g[h * hd + j + half];
            same &= p[h * hd + j] == a * cs[j] - b * sn[j] && p[h * hd + j + half] == b * cs[j] + a * sn[j];
        }
    CHECK_MSG(same, "%s: rope differs from the two-rounding expression", kern_path_name());
    /* rmsnorm (BF16 weight, dim 1000: vector body and tail), 3 rows; and one row alone */
    const int dim = 1000;
    uint16_t wb[1000];
    for (int k = 0; k < dim; k++) wb[k] = ds_f32_to_bf16((float)(rng_uniform(&rng) + 0.5));
    Weight w = weight_view(wb, DS_BF16, 1, dim);
    kern_rmsnorm(o, g, &w, 3, dim, 1e-6f);
    kern_rmsnorm(p, g + dim, &w, 1, dim, 1e-6f);
    CHECK_MSG(!memcmp(o + dim, p, sizeof(float) * dim), "%s: rmsnorm row alone differs from inside 3 rows", kern_path_name());
    worst = 0;
    for (int r = 0; r < 3; r++) {
        double ss = 0;
        for (int k = 0; k < dim; k++) ss += (double)g[r * dim + k] * g[r * dim + k];
        double rs = 1.0 / sqrt(ss / dim + 1e-6);
        for (int k = 0; k < dim; k++) {
            double ref = ds_bf16_to_f32(wb[k]) * (g[r * dim + k] * rs), e = fabs(o[r * dim + k] - ref) / (0x1p-20 * fabs(ref) + 1e-30);
            if (!(e <= worst)) worst = e;
        }
    }
    CHECK_MSG(worst <= 1.0, "%s: rmsnorm error %.3g of the bound", kern_path_name(), worst);
    /* dot: lengths around the 16-lane step */
    const int lens[6] = {1, 15, 16, 17, 100, 1000};
    for (int t = 0; t < 6; t++) {
        double ref = 0, mag = 0;
        for (int k = 0; k < lens[t]; k++) { ref += (double)g[k] * u[k]; mag += fabs((double)g[k] * u[k]); }
        float d = kern_dot_f32(g, u, lens[t]);
        CHECK_MSG(fabs(d - ref) <= (lens[t] / 16.0 + 8) * 0x1p-23 * mag, "%s: dot of %d: %.9g vs %.9g", kern_path_name(), lens[t], d, ref);
    }
    /* must fail: a swiglu value moved by 2 bounds */
    double ref0 = (double)g[0] / (1.0 + exp(-(double)g[0])) * u[0];
    CHECK(fabs((o[0] = (float)(ref0 + 2.5 * 0x1p-20 * fabs(ref0))) - ref0) > 0x1p-20 * fabs(ref0));
    free(g); free(u); free(o); free(p);
}

int main(void) {
    kern_init();
    const char *chosen = kern_path_name();
    fprintf(stderr, "kernels: %s (cpuid, DSPARK_KERNELS)\n", chosen);
    CHECK(!kern_set_path("avx9000"));
    const char *paths[3] = {"portable", "avx2", "avx512"};
    int tested = 0;
    for (int p = 0; p < 3; p++) {
        if (!kern_set_path(paths[p])) {
            fprintf(stderr, "path %s: not supported by this CPU, not tested\n", paths[p]);
            continue;
        }
        CHECK(strcmp(kern_path_name(), paths[p]) == 0);
        fprintf(stderr, "path %s\n", paths[p]);
        tested++;
        RUN(test_matmul_f32_path);
        RUN(test_matmul_bf16_activations);
        RUN(test_matmul_multi);
        RUN(test_attention);
        RUN(test_elementwise);
        RUN(test_argmax);
    }
    CHECK(tested >= 1);
    kern_release_scratch();
    return test_summary();
}
