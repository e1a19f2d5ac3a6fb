/* kernels_bf16_avx512.c - the OPT-IN BF16-activation matmul (AVX512_BF16 vdpbf16ps), for BF16
 * weights only. Never the default: DSPARK_BF16_ACT=1 or kern_set_bf16_activations(true).
 *
 * What changes: each activation row is rounded to BF16 (round to nearest even) once per
 * matmul, and products are summed by vdpbf16ps: lane j of a 32-wide k step accumulates
 * x[2j] w[2j] + x[2j+1] w[2j+1] into an F32 accumulator (denormals flushed). Rows stay exact
 * with respect to each other: output (i, o) is
 *     acc = 0; for each 32-wide k step: acc = dpbf16(acc, bf16(x[i][k..k+31]), W[o][k..k+31])
 *     (zeros past K); out[i][o] = hsum16(acc)
 * in every kernel below, so a row's value does not depend on the batch or the thread count
 * (while AMX is off: kernels_amx.c takes batches of >= KERN_AMX_MIN_ROWS rows when on);
 * it differs from the default F32 path by the rounding of x: relative error per product
 * <= 2^-9, so |out - exact| <= ~2^-8 sum_k |x_k w_k| (tests/test_kernels.c checks this bound).
 *
 * Why: the weights are already BF16, so nothing is widened, and vdpbf16ps does 32
 * multiply-adds per instruction where vfmadd231ps does 16. */
#include "kernels.h"

#include <immintrin.h>
#include <string.h>
#include <omp.h>

#define AI static inline __attribute__((always_inline))

/* same tree as kernels_avx512.c's hsum16 / hsum16x16 */
AI float hsum16(__m512 v) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}
AI __m512 hsum16x16(const __m512 v[16]) {
    __m512 u[8], w[4], z[2];
    #pragma GCC unroll 8
    for (int p = 0; p < 8; p++)
        u[p] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0x44), _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0xEE));
    #pragma GCC unroll 4
    for (int p = 0; p < 4; p++)
        w[p] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * p], u[2 * p + 1], 0x88), _mm512_shuffle_f32x4(u[2 * p], u[2 * p + 1], 0xDD));
    #pragma GCC unroll 2
    for (int p = 0; p < 2; p++)
        z[p] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * p], w[2 * p + 1], 0x44), _mm512_shuffle_ps(w[2 * p], w[2 * p + 1], 0xEE));
    __m512 r = _mm512_add_ps(_mm512_shuffle_ps(z[0], z[1], 0x88), _mm512_shuffle_ps(z[0], z[1], 0xDD));
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(idx, r);
}

AI __m512 dp(__m512 acc, __m512i x, __m512i w) { return _mm512_dpbf16_ps(acc, (__m512bh)x, (__m512bh)w); }

/* ---- activations to BF16: rows of Kp (K rounded up to 32, zero padded) ---- */

static void x_to_bf16(uint16_t *xb, const float *x, int n, int K, int Kp) {
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * K;
        uint16_t *bi = xb + (size_t)i * Kp;
        for (int k = 0; k < Kp; k += 32) {
            int r = K - k;
            __mmask16 mlo = r >= 16 ? 0xFFFF : r > 0 ? (__mmask16)((1u << r) - 1) : 0;
            __mmask16 mhi = r >= 32 ? 0xFFFF : r > 16 ? (__mmask16)((1u << (r - 16)) - 1) : 0;
            __m512 lo = _mm512_maskz_loadu_ps(mlo, xi + k), hi = _mm512_maskz_loadu_ps(mhi, xi + k + 16);
            _mm512_storeu_si512((void *)(bi + k), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
    }
}

/* per calling thread, grown when a larger batch comes (never in a steady token loop) */
static _Thread_local uint16_t *t_xb;
static _Thread_local size_t t_xb_cap;

void kern_bf16_release_scratch(void) {
    ds_free_aligned(t_xb);
    t_xb = NULL;
    t_xb_cap = 0;
}

/* ---- decode: up to DN_MAX rows, DC weight rows at a time, DR rows per tile ---- */

#ifndef DC
#define DC 4
#endif
#define DR 6     /* DR x DC accumulators, DR x vectors and a weight vector: 31 of the 32 registers */
/* Products of up to DN_MAX rows take the decode kernel, more the prefill tiles; with AMX on,
 * products of >= KERN_AMX_MIN_ROWS (9) rows go to AMX first. Measured (1 thread, 3072 x 1024,
 * weights streamed from DRAM; ms per product): decode kernel n 1-6 0.38-0.44, n 8 0.55,
 * n 12 0.78-0.82, n 15 1.00; prefill tiles n 16 1.43, n 24 1.95; AMX (oneDNN) n 2-16
 * 0.58-0.65 (its own floor), so AMX from 9 rows and the decode kernel up to 15 without it.
 * A hand-written AMX kernel for 7-16 rows (C^T = W . X^T, weights tile-loaded in place, 1-4
 * C tiles per x tile, with and without software prefetch) measured no better: 0.52-0.61 ms
 * at n 8, its tile loads streaming at ~11 GB/s; not kept. */
#ifndef DN_MAX
#define DN_MAX 15
#endif
/* Software prefetch PFD weights (2 KB) ahead in each of the DC streams: the hardware
 * prefetchers stop at 4 KB pages (the checkpoint is a page-cache mmap), the prefetch runs on
 * into the next row of the segment, which the next tile reads. Measured (1 thread, 3072 x 1024,
 * 1024 x 3072, 2048 x 1024, 151936 x 1024): 14.1-15.2 -> 16.3-17.1 GB/s; 512-2048 alike,
 * 4096 less; hint T0 / T1 / T2 alike; DC 2, 6, 8 no better than 4. */
#ifndef PFD
#define PFD 1024
#endif
#ifndef PFH
#define PFH _MM_HINT_T0
#endif

/* weight rows o + c * cs (c < nc): DC far-apart sequential streams (see kernels_avx512.c) */
AI void decode_tile(int R, int nc, float *out, int O, const uint16_t *xb, int Kp, const uint16_t *w, int K, int o, int cs) {
    const int kfull = K & ~31;
    const __mmask32 tail = (__mmask32)((1ull << (K & 31)) - 1);
    __m512 acc[DR][DC];
    #pragma GCC unroll 8
    for (int r = 0; r < R; r++)
        #pragma GCC unroll 8
        for (int c = 0; c < DC; c++) acc[r][c] = _mm512_setzero_ps();
    const uint16_t *wr[DC];
    #pragma GCC unroll 8
    for (int c = 0; c < DC; c++) wr[c] = w + (size_t)(o + (c < nc ? c : 0) * cs) * K;
    for (int k = 0; k < kfull; k += 32) {
        __m512i xv[DR];
        #pragma GCC unroll 8
        for (int r = 0; r < R; r++) xv[r] = _mm512_loadu_si512((const void *)(xb + (size_t)r * Kp + k));
        #pragma GCC unroll 8
        for (int c = 0; c < DC; c++) {
            if (c >= nc) break;
#if PFD
            _mm_prefetch((const char *)(wr[c] + k + PFD), PFH);
#endif
            __m512i wv = _mm512_loadu_si512((const void *)(wr[c] + k));
            #pragma GCC unroll 8
            for (int r = 0; r < R; r++) acc[r][c] = dp(acc[r][c], xv[r], wv);
        }
    }
    if (tail) {
        __m512i xv[DR];
        #pragma GCC unroll 8
        for (int r = 0; r < R; r++) xv[r] = _mm512_loadu_si512((const void *)(xb + (size_t)r * Kp + kfull));
        #pragma GCC unroll 8
        for (int c = 0; c < DC; c++) {
            if (c >= nc) break;
            __m512i wv = _mm512_maskz_loadu_epi16(tail, wr[c] + kfull);
            #pragma GCC unroll 8
            for (int r = 0; r < R; r++) acc[r][c] = dp(acc[r][c], xv[r], wv);
        }
    }
    #pragma GCC unroll 8
    for (int r = 0; r < R; r++)
        #pragma GCC unroll 8
        for (int c = 0; c < DC; c++)
            if (c < nc) out[(size_t)r * O + o + c * cs] = hsum16(acc[r][c]);
}

/* columns [o0, o1) as DC segments (kernels_avx512.c's decode_range); the n rows go through
 * each tile in groups of at most DR, so the later groups find the tile's weights in L1 */
AI void decode_range(int n, float *out, const uint16_t *xb, int Kp, const Weight *W, int o0, int o1) {
    const int K = W->cols, O = W->rows, nc_all = o1 - o0, S = (nc_all + DC - 1) / DC;
    const uint16_t *w = W->host;
    for (int j = 0; j < S; j++) {
        int nc = 0;
        while (nc < DC && nc * S + j < nc_all) nc++;
        for (int i = 0; i < n; i += DR) {
            const uint16_t *xi = xb + (size_t)i * Kp;
            float *oi = out + (size_t)i * O;
            switch (n - i < DR ? n - i : DR) {
            case 6: decode_tile(6, nc, oi, O, xi, Kp, w, K, o0 + j, S); break;
            case 5: decode_tile(5, nc, oi, O, xi, Kp, w, K, o0 + j, S); break;
            case 4: decode_tile(4, nc, oi, O, xi, Kp, w, K, o0 + j, S); break;
            case 3: decode_tile(3, nc, oi, O, xi, Kp, w, K, o0 + j, S); break;
            case 2: decode_tile(2, nc, oi, O, xi, Kp, w, K, o0 + j, S); break;
            default: decode_tile(1, nc, oi, O, xi, Kp, w, K, o0 + j, S); break;
            }
        }
    }
}

static void decode_cols(float *out, const uint16_t *xb, int Kp, const Weight *W, int n, int o0, int o1) {
    if (n == 1) decode_range(1, out, xb, Kp, W, o0, o1); /* decode proper: its own copy, no row loop */
    else decode_range(n, out, xb, Kp, W, o0, o1);
}

/* ---- prefill: TR x NP tiles, weights read in place (k blocks of KC stay in L1) ---- */

#ifndef BKC
#define BKC 2048    /* k per block: NP rows x BKC BF16 stay in L1 */
#endif
#ifndef BRB_BYTES
#define BRB_BYTES (768 * 1024)  /* BF16 x block kept in L2 (1 MB on Zen 5): 128 rows of K 3072 */
#endif
#define RB_MAX 128
#ifndef BNP
#define BNP 6
#endif
#ifndef BTR
#define BTR 4
#endif
#define KC BKC
#define RB_BYTES BRB_BYTES
#define NP BNP
#define TR BTR
#define NACC (TR * NP)
#define NRED ((NACC + 15) / 16)

/* copy W[o..o+nc)[k0..k0+kn) into pan[c][0..knp) (knp = kn rounded up to 32, zero padded; rows
 * past nc zero): the checkpoint's tensors are only 8-byte aligned, so in place every 64-byte
 * weight load would split two cache lines; the packed panel is aligned and stays in L1 */
static void panel_pack(uint16_t *pan, int knp, const uint16_t *w, int K, int nc, int k0, int kn) {
    for (int c = 0; c < NP; c++) {
        uint16_t *p = pan + (size_t)c * knp;
        if (c >= nc) { memset(p, 0, sizeof(uint16_t) * knp); continue; }
        const uint16_t *src = w + (size_t)c * K + k0;
        for (int k = 0; k < knp; k += 32) {
            int r = kn - k;
            __mmask32 m = r >= 32 ? 0xFFFFFFFFu : r > 0 ? (__mmask32)((1ull << r) - 1) : 0;
            _mm512_store_si512((void *)(p + k), _mm512_maskz_loadu_epi16(m, src + k));
        }
    }
}

/* one R x NP tile over a packed k block of knp (zero padded past K, as x is) */
AI void tile_run(int R, float *out, int O, int nc, const uint16_t *xb, int Kp, const uint16_t *pan, int knp, int k0,
                 float *spill, bool first, bool last) {
    __m512 acc[TR][NP];
    #pragma GCC unroll 8
    for (int r = 0; r < R; r++)
        #pragma GCC unroll 8
        for (int c = 0; c < NP; c++) acc[r][c] = first ? _mm512_setzero_ps() : _mm512_load_ps(spill + (r * NP + c) * 16);
    const int nsteps = knp >> 5;
    for (int s = 0; s < nsteps; s++) {
        __m512i wv[NP];
        #pragma GCC unroll 8
        for (int c = 0; c < NP; c++) wv[c] = _mm512_load_si512((const void *)(pan + (size_t)c * knp + 32 * s));
        #pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            __m512i xv = _mm512_loadu_si512((const void *)(xb + (size_t)r * Kp + k0 + 32 * s));
            #pragma GCC unroll 8
            for (int c = 0; c < NP; c++) acc[r][c] = dp(acc[r][c], xv, wv[c]);
        }
    }
    if (!last) {
        #pragma GCC unroll 8
        for (int r = 0; r < R; r++)
            #pragma GCC unroll 8
            for (int c = 0; c < NP; c++) _mm512_store_ps(spill + (r * NP + c) * 16, acc[r][c]);
        return;
    }
    float res[NRED * 16] __attribute__((aligned(64)));
    #pragma GCC unroll 4
    for (int g = 0; g < NRED; g++) {
        __m512 v[16];
        #pragma GCC unroll 16
        for (int j = 0; j < 16; j++) {
            int a = g * 16 + j, r = a / NP, c = a % NP;
            v[j] = a < NACC && r < R ? acc[r < TR ? r : 0][c] : _mm512_setzero_ps();
        }
        _mm512_store_ps(res + 16 * g, hsum16x16(v));
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < nc; c++) out[(size_t)r * O + c] = res[r * NP + c];
}

static void tile_any(int R, float *out, int O, int nc, const uint16_t *xb, int Kp, const uint16_t *pan, int knp, int k0,
                     float *spill, bool first, bool last) {
    switch (R) {
#if TR >= 6
    case 6: tile_run(6, out, O, nc, xb, Kp, pan, knp, k0, spill, first, last); break;
#endif
#if TR >= 5
    case 5: tile_run(5, out, O, nc, xb, Kp, pan, knp, k0, spill, first, last); break;
#endif
#if TR >= 4
    case 4: tile_run(4, out, O, nc, xb, Kp, pan, knp, k0, spill, first, last); break;
#endif
    case 3: tile_run(3, out, O, nc, xb, Kp, pan, knp, k0, spill, first, last); break;
    case 2: tile_run(2, out, O, nc, xb, Kp, pan, knp, k0, spill, first, last); break;
    default: tile_run(1, out, O, nc, xb, Kp, pan, knp, k0, spill, first, last); break;
    }
}

static void prefill_cols(float *out, const uint16_t *xb, int Kp, const Weight *W, int n, int o0, int o1) {
    const int K = W->cols, O = W->rows;
    const uint16_t *w = W->host;
    float spill[RB_MAX * NP * 16] __attribute__((aligned(64)));
    uint16_t pan[NP * KC] __attribute__((aligned(64)));
    int rb = (int)(RB_BYTES / ((size_t)Kp * 2));
    rb = rb < TR ? TR : rb > RB_MAX ? RB_MAX : rb - rb % TR;
    /* equal blocks (a short last block would re-read every weight panel for a few tiles) */
    const int nblk = (n + rb - 1) / rb;
    rb = ((n + nblk - 1) / nblk + TR - 1) / TR * TR;
    for (int i0 = 0; i0 < n; i0 += rb) {
        int i1 = i0 + rb < n ? i0 + rb : n;
        for (int o = o0; o < o1; o += NP) {
            int nc = o1 - o < NP ? o1 - o : NP;
            for (int k0 = 0; k0 < K; k0 += KC) {
                int kn = K - k0 < KC ? K - k0 : KC, knp = (kn + 31) & ~31;
                panel_pack(pan, knp, w + (size_t)o * K, K, nc, k0, kn);
                /* the next panel: (o, k0 + KC), else (o + NP, 0), else the next row block's first */
                int no = o, nk0 = k0 + KC;
                if (nk0 >= K) { no = o + NP; nk0 = 0; }
                if (no >= o1) no = o0;
                const int nnc = o1 - no < NP ? o1 - no : NP, nkn = K - nk0 < KC ? K - nk0 : KC;
                const int ntiles = (i1 - i0 + TR - 1) / TR;
                for (int i = i0; i < i1; i += TR) {
                    int R = i1 - i < TR ? i1 - i : TR;
                    kern_prefetch_part(w + (size_t)no * K + nk0, (size_t)nkn * 2, (size_t)K * 2, nnc, (i - i0) / TR, ntiles);
                    tile_any(R, out + (size_t)i * O + o, O, nc, xb + (size_t)i * Kp, Kp, pan, knp, k0,
                             spill + (size_t)(i - i0) * NP * 16, k0 == 0, k0 + kn >= K);
                }
            }
        }
    }
}

static bool grow_scratch(size_t need) {
    if (need <= t_xb_cap) return true;
    uint16_t *p = ds_malloc_aligned(need);
    if (!p) return false;
    ds_free_aligned(t_xb);
    t_xb = p;
    t_xb_cap = need;
    return true;
}

static inline void part_range(int O, int t, int T, int *o0, int *o1) {
    const int nchunk = (O + 15) / 16;
    int c0 = (int)((long)nchunk * t / T), c1 = (int)((long)nchunk * (t + 1) / T);
    *o0 = c0 * 16;
    *o1 = c1 * 16 < O ? c1 * 16 : O;
}

/* AMX (kernels_amx.c): x rounded to BF16 as below (so the inputs are the same bits), then
 * each product one oneDNN call (its own parallel region), then the activation. false when
 * oneDNN refused a product (the caller then does them all on the vector kernels). */
static bool multi_amx(float *const *outs, const float *x, uint16_t *xb, int Kp, const Weight *const *ws, int count, int n,
                      int act) {
    const int K = ws[0]->cols;
    #pragma omp parallel
    {
        int T = omp_get_num_threads(), t = omp_get_thread_num();
        int r0 = (int)((long)n * t / T), r1 = (int)((long)n * (t + 1) / T);
        x_to_bf16(xb + (size_t)r0 * Kp, x + (size_t)r0 * K, r1 - r0, K, Kp);
    }
    for (int j = 0; j < count; j++)
        if (!kern_matmul_amx(outs[j], ws[j]->rows, xb, Kp, ws[j], n)) return false;
    if (act == KERN_ACT_SWIGLU) {
        const int O = ws[0]->rows;
        #pragma omp parallel
        {
            int o0, o1;
            part_range(O, omp_get_thread_num(), omp_get_num_threads(), &o0, &o1);
            for (int i = 0; i < n && o0 < o1; i++)
                kern_swiglu_avx512(outs[0] + (size_t)i * O + o0, outs[0] + (size_t)i * O + o0, outs[1] + (size_t)i * O + o0,
                                   (size_t)(o1 - o0));
        }
    }
    return true;
}

/* count BF16 matmuls of the same x in one parallel region: x rounded to BF16 once (rows split
 * among the threads, one barrier), then each thread its column range of each weight; act as
 * in kern_matmul_multi_avx512. Returns false (nothing done) when the scratch cannot be had. */
bool kern_matmul_multi_bf16act_avx512(float *const *outs, const float *x, const Weight *const *ws, int count, int n, int act) {
    const int K = ws[0]->cols, Kp = (K + 31) & ~31;
    size_t work = 0;
    for (int j = 0; j < count; j++) {
        DS_ASSERT(ws[j]->dtype == DS_BF16 && ws[j]->cols == K);
        work += (size_t)ws[j]->rows * K * (size_t)n;
    }
    if (!grow_scratch((size_t)n * Kp * sizeof(uint16_t))) return false;
    uint16_t *xb = t_xb;
    if (n >= KERN_AMX_MIN_ROWS && kern_amx_on() && multi_amx(outs, x, xb, Kp, ws, count, n, act)) return true;
    #pragma omp parallel if (work >= 65536)
    {
        int T = omp_get_num_threads(), t = omp_get_thread_num();
        if (n >= 2 * T) {
            int r0 = (int)((long)n * t / T), r1 = (int)((long)n * (t + 1) / T);
            x_to_bf16(xb + (size_t)r0 * Kp, x + (size_t)r0 * K, r1 - r0, K, Kp);
            #pragma omp barrier
        } else {
            /* a few rows (decode): one thread rounds them (single's barrier) */
            #pragma omp single
            x_to_bf16(xb, x, n, K, Kp);
        }
        for (int j = 0; j < count; j++) {
            int o0, o1;
            part_range(ws[j]->rows, t, T, &o0, &o1);
            if (o0 >= o1) continue;
            if (n <= DN_MAX) decode_cols(outs[j], xb, Kp, ws[j], n, o0, o1);
            else prefill_cols(outs[j], xb, Kp, ws[j], n, o0, o1);
        }
        if (act == KERN_ACT_SWIGLU) {
            int o0, o1, O = ws[0]->rows;
            part_range(O, t, T, &o0, &o1);
            for (int i = 0; i < n && o0 < o1; i++)
                kern_swiglu_avx512(outs[0] + (size_t)i * O + o0, outs[0] + (size_t)i * O + o0, outs[1] + (size_t)i * O + o0,
                                   (size_t)(o1 - o0));
        }
    }
    return true;
}

bool kern_matmul_bf16act_avx512(float *out, const float *x, const Weight *w, int n) {
    float *outs[1] = {out};
    const Weight *ws[1] = {w};
    return kern_matmul_multi_bf16act_avx512(outs, x, ws, 1, n, KERN_ACT_NONE);
}
