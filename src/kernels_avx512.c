/* kernels_avx512.c - AVX-512 matmul path (compiled with -mavx512*, used only when cpuid says
 * the CPU has AVX-512F). Same lane discipline as the portable path: lane = k mod 16, one
 * accumulator per (row, column), fixed final reduction, so a row's value never depends on
 * which other rows share the call. (FMA makes it differ from the portable path in the last
 * bits; one path is chosen per process.) */
#include "kernels.h"

#include <immintrin.h>

bool kern_avx512_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}

static inline __m512 load_w16(const Weight *w, size_t off) {
    if (w->dtype == DS_BF16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w->host + off));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    if (w->dtype == DS_F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w->host + off)));
    return _mm512_loadu_ps((const float *)w->host + off);
}

static inline __m512 load_w_tail(const Weight *w, size_t off, __mmask16 m) {
    if (w->dtype == DS_BF16) {
        __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w->host + off);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    if (w->dtype == DS_F16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)w->host + off));
    return _mm512_maskz_loadu_ps(m, (const float *)w->host + off);
}

/* fixed tree, same shape as the portable reduce16 */
static inline float hsum16(__m512 v) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

/* 4 output columns x up to 4 rows per inner tile; each (row, col) has its own accumulator. */
bool kern_matmul_cols_avx512(float *out, const float *x, const Weight *w, int n, int o0, int o1) {
    const int K = w->cols, O = w->rows;
    const int kfull = K & ~15;
    const __mmask16 tail = (__mmask16)((1u << (K & 15)) - 1);
    for (int o = o0; o < o1; o += 4) {
        int nc = o1 - o < 4 ? o1 - o : 4;
        for (int i = 0; i < n; i += 4) {
            int nr = n - i < 4 ? n - i : 4;
            __m512 acc[4][4];
            for (int r = 0; r < 4; r++)
                for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
            for (int k = 0; k < kfull; k += 16) {
                __m512 wv[4];
                for (int c = 0; c < nc; c++) wv[c] = load_w16(w, (size_t)(o + c) * K + k);
                for (int r = 0; r < nr; r++) {
                    __m512 xv = _mm512_loadu_ps(x + (size_t)(i + r) * K + k);
                    for (int c = 0; c < nc; c++) acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
                }
            }
            if (tail) {
                __m512 wv[4];
                for (int c = 0; c < nc; c++) wv[c] = load_w_tail(w, (size_t)(o + c) * K + kfull, tail);
                for (int r = 0; r < nr; r++) {
                    __m512 xv = _mm512_maskz_loadu_ps(tail, x + (size_t)(i + r) * K + kfull);
                    for (int c = 0; c < nc; c++) acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
                }
            }
            for (int r = 0; r < nr; r++)
                for (int c = 0; c < nc; c++) out[(size_t)(i + r) * O + o + c] = hsum16(acc[r][c]);
        }
    }
    return true;
}
