/* test_kernels.c - the matmul kernels (kernels*.c) on their own: every output row must be
 * bitwise independent of the batch it is in (n = 1..3 goes through the decode kernel, n >= 4
 * through the prefill tiles) and of the thread count, for BF16, F16 and F32 weights, shapes
 * with K and O tails and several k blocks, and weights at the 8-byte alignment safetensors
 * gives; and every value must be within a stated bound of a double-precision reference:
 *   F32 activations: |out - ref| <= (K/16 + 8) 2^-23 sum_k |x_k w_k|  (16 lanes of K/16 FMAs,
 *                    then a 4-level tree: a standard summation bound with margin 2)
 *   BF16 activations (opt-in): |out - ref| <= 2^-7 sum_k |x_k w_k|  (x rounded to BF16: 2^-9
 *                    per product, plus the F32 accumulation, with margin)
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
static const int g_ns[] = {1, 2, 3, 4, 5, 7, 13, 40, 130}; /* 130: several row blocks at K 3000 */

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
static void check_case(ds_dtype dt, Shape s, bool bf16act, Rng *rng) {
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
    for (size_t i = 0; i < (size_t)nmax * K; i++) x[i] = (float)(rng_uniform(rng) * 2 - 1);
    omp_set_num_threads(2);
    for (int i = 0; i < nmax; i++) kern_matmul(single + (size_t)i * O, x + (size_t)i * K, &w, 1);
    int bad = 0;
    for (size_t t = 0; t < sizeof g_ns / sizeof g_ns[0]; t++)
        for (int th = 1; th <= 2; th++) {
            int n = g_ns[t];
            omp_set_num_threads(th);
            /* rows taken from the middle of x so that n rows start at different offsets */
            int i0 = (nmax - n) / 2;
            kern_matmul(out, x + (size_t)i0 * K, &w, n);
            if (memcmp(out, single + (size_t)i0 * O, sizeof(float) * n * O)) {
                if (!bad) fprintf(stderr, "  dtype %d O %d K %d bf16act %d: n %d threads %d differs from the rows alone\n", (int)dt, O, K,
                                  (int)bf16act, n, th);
                bad = 1;
            }
        }
    CHECK_MSG(!bad, "rows not bitwise independent of batch / threads (dtype %d, %d x %d, bf16act %d)", (int)dt, O, K, (int)bf16act);
    double scale = bf16act ? 0x1p-7 : (K / 16.0 + 8) * 0x1p-23;
    double r = worst_ratio(single, x, &w, nmax, scale);
    CHECK_MSG(r <= 1.0, "error %.3g of the bound (dtype %d, %d x %d, bf16act %d)", r, (int)dt, O, K, (int)bf16act);
    /* must fail: one value moved by twice the bound */
    double mag = 0;
    for (int k = 0; k < K; k++) mag += fabs((double)x[k] * wval(&w, k));
    single[0] += (float)(2.5 * scale * mag);
    CHECK(worst_ratio(single, x, &w, 1, scale) > 1.0);
    omp_set_num_threads(2);
    free(x); free(single); free(out);
    ds_free_aligned(wbase);
}

static void test_matmul_f32_path(void) {
    Rng rng;
    rng_seed(&rng, 7, 0);
    kern_set_bf16_activations(false);
    ds_dtype dts[3] = {DS_BF16, DS_F16, DS_F32};
    for (int d = 0; d < 3; d++)
        for (size_t s = 0; s < sizeof g_shapes / sizeof g_shapes[0]; s++) check_case(dts[d], g_shapes[s], false, &rng);
}

static void test_matmul_bf16_activations(void) {
    if (!kern_set_bf16_activations(true)) {
        fprintf(stderr, "  (BF16-activation path unavailable: no AVX512_BF16 or DSPARK_KERNELS=portable; not tested)\n");
        return;
    }
    Rng rng;
    rng_seed(&rng, 8, 0);
    for (size_t s = 0; s < sizeof g_shapes / sizeof g_shapes[0]; s++) check_case(DS_BF16, g_shapes[s], true, &rng);
    kern_set_bf16_activations(false);
}

/* kern_matmul_multi (one parallel region for q/k/v, gate/up + swiglu) equals the separate
 * kern_matmul and kern_swiglu calls bitwise, on both activation paths */
static void test_matmul_multi(void) {
    Rng rng;
    rng_seed(&rng, 9, 0);
    const int K = 200, O[3] = {96, 40, 96}, ns[3] = {1, 3, 13};
    void *base[3];
    Weight w[3];
    for (int j = 0; j < 3; j++) {
        uint16_t *d = alloc_misaligned((size_t)O[j] * K * 2, &base[j]);
        for (int i = 0; i < O[j] * K; i++) d[i] = ds_f32_to_bf16((float)(rng_uniform(&rng) - 0.5) * 0.2f);
        w[j] = weight_view(d, DS_BF16, O[j], K);
    }
    float *x = malloc(sizeof(float) * 13 * K), *a[3], *b[3];
    for (int i = 0; i < 13 * K; i++) x[i] = (float)(rng_uniform(&rng) * 4 - 2);
    for (int j = 0; j < 3; j++) { a[j] = malloc(sizeof(float) * 13 * O[j]); b[j] = malloc(sizeof(float) * 13 * O[j]); }
    for (int path = 0; path < 2; path++) {
        if (path == 1 && !kern_set_bf16_activations(true)) break;
        for (int t = 0; t < 3; t++)
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

int main(void) {
    kern_init();
    fprintf(stderr, "kernels: %s\n", kern_path_name());
    RUN(test_matmul_f32_path);
    RUN(test_matmul_bf16_activations);
    RUN(test_matmul_multi);
    kern_release_scratch();
    return test_summary();
}
