/* kernels_avx512.c - AVX-512 kernels (compiled with -mavx512*, used only when cpuid says the
 * CPU has AVX-512F/BW/VL/DQ; see kernels.h for the arithmetic every path keeps).
 *
 * Matmul, the one rule that makes rows independent: output (i, o) is
 *     acc = 0 (16 lanes); for each 16-wide k step: acc = fma(x[i][k..k+15], W[o][k..k+15], acc)
 *     (the last step masked to K, zeros beyond); out[i][o] = hsum16(acc)
 * with hsum16 the fixed tree (lane j + lane j+8, then +4, +2, +1). Every kernel below computes
 * exactly that for every (i, o): tiles, panels, k blocks and thread splits only decide which
 * (i, o) pairs are computed together, never the operations of one pair. So the decode kernel
 * (1-3 rows, weights widened straight from memory) and the prefill kernel (BF16 panel widened
 * once into an F32 buffer, 4x4 register tiles over an L2-resident block of rows) give the same
 * bits for a row, and so does any thread count.
 *
 * Decode (few rows) is memory bound: each thread streams a contiguous range of weight rows,
 * 8 at a time, with software prefetch one tile ahead. Prefill is compute bound: per thread,
 * column panels of 4 weight rows x KC are widened to F32 once and reused by every 4-row tile of
 * a row block sized to stay in L2. */
#include "kernels.h"

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

bool kern_avx512_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

bool kern_avx512bf16_available(void) {
    __builtin_cpu_init();
    return kern_avx512_available() && __builtin_cpu_supports("avx512bf16");
}

/* ---- loads ---- */

AI __m512 bf16_16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
AI __m512 bf16_16m(const uint16_t *p, __mmask16 m) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}
/* 16 weights of row `row` starting at k, widened to F32; dt is a compile-time constant at
 * every call site (the callers are instantiated per dtype) */
AI __m512 wload(ds_dtype dt, const void *w, size_t off) {
    if (dt == DS_BF16) return bf16_16((const uint16_t *)w + off);
    if (dt == DS_F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + off)));
    return _mm512_loadu_ps((const float *)w + off);
}
AI __m512 wload_m(ds_dtype dt, const void *w, size_t off, __mmask16 m) {
    if (dt == DS_BF16) return bf16_16m((const uint16_t *)w + off, m);
    if (dt == DS_F16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)w + off));
    return _mm512_maskz_loadu_ps(m, (const float *)w + off);
}

/* ---- the fixed reduction ---- */

/* The hsum16 tree of one vector (kept for single results). */
AI float hsum16(__m512 v) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    b = _mm_add_ps(b, _mm_movehl_ps(b, b));
    b = _mm_add_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

/* 16 accumulators reduced at once, each by exactly the hsum16 tree (the same pairs added at
 * every level; fp addition is commutative, so operand order does not matter): returns r with
 * r[j] = hsum16(v[j]). Levels: (j, j+8), (j, j+4), (j, j+2), (j, j+1) within each vector. */
AI __m512 hsum16x16(const __m512 v[16]) {
    __m512 u[8], w[4], z[2];
    #pragma GCC unroll 16
    for (int p = 0; p < 8; p++)  /* u[p] = [v[2p][0:8]+v[2p][8:16] | v[2p+1][...]] */
        u[p] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0x44), _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0xEE));
    #pragma GCC unroll 16
    for (int p = 0; p < 4; p++)  /* w[p] = 4 chunks, chunk c = v[4p+c]'s (j, j+4) sums */
        w[p] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * p], u[2 * p + 1], 0x88), _mm512_shuffle_f32x4(u[2 * p], u[2 * p + 1], 0xDD));
    #pragma GCC unroll 16
    for (int p = 0; p < 2; p++)  /* chunk c = [v[8p+c] (j,j+2) x2, v[8p+4+c] (j,j+2) x2] */
        z[p] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * p], w[2 * p + 1], 0x44), _mm512_shuffle_ps(w[2 * p], w[2 * p + 1], 0xEE));
    /* chunk c = [h(v[c]), h(v[4+c]), h(v[8+c]), h(v[12+c])] */
    __m512 r = _mm512_add_ps(_mm512_shuffle_ps(z[0], z[1], 0x88), _mm512_shuffle_ps(z[0], z[1], 0xDD));
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(idx, r);
}

/* ---- decode: R (1..3) rows, DC weight rows streamed at a time ---- */

#ifndef DC
#define DC 4 /* weight rows per decode tile */
#endif
#ifndef DR
#define DR 6 /* activation rows per decode tile */
#endif
#ifndef DPFD
#define DPFD 1024 /* software prefetch distance of the decode streams, in elements (0: none) */
#endif
#ifndef DN_MAX
#define DN_MAX 8 /* products of up to DN_MAX rows take the decode kernel (measured: 4-8 rows 6-27% faster than the prefill kernel at K 192) */
#endif

/* One tile: weight rows o + c * cs (c < nc), each the full K. The DC rows come from DC
 * segments of the thread's range that lie far apart, so the thread reads DC independent
 * sequential streams: one core gets ~25% more bandwidth from DC streams than from one (the
 * hardware prefetchers run one per stream; bench_peak / docs/bench-cpu.md). Each stream is also
 * prefetched DPFD elements (2 KB of BF16) ahead, one prefetch per line: the hardware
 * prefetchers stop at the 4 KB pages of the checkpoint's mmap (kernels_bf16_avx512.c found
 * this). Measured on the Xeon, Qwen3-0.6B shape, decode tok/s at 1 / 2 threads: 9.86 / 19.30
 * without, 11.2-12.0 / 21.6-22.8 with. Values do not change. */
AI void decode_tile(ds_dtype dt, int R, int nc, float *out, int O, const float *x, const void *w, int K, int o, int cs) {
    const int kfull = K & ~15;
    const __mmask16 tail = (__mmask16)((1u << (K & 15)) - 1);
    const size_t es = dt == DS_F32 ? 4 : 2;
    (void)es;
    __m512 acc[DR][DC];
    #pragma GCC unroll 16
    for (int r = 0; r < R; r++)
        #pragma GCC unroll 16
        for (int c = 0; c < DC; c++) acc[r][c] = _mm512_setzero_ps();
    size_t base[DC];
    #pragma GCC unroll 16
    for (int c = 0; c < DC; c++) base[c] = (size_t)(o + (c < nc ? c : 0) * cs) * K;
    for (int k = 0; k < kfull; k += 16) {
        __m512 xv[DR];
        #pragma GCC unroll 16
        for (int r = 0; r < R; r++) xv[r] = _mm512_loadu_ps(x + (size_t)r * K + k);
        #pragma GCC unroll 16
        for (int c = 0; c < DC; c++) {
            if (c >= nc) break;
#if DPFD
            /* one prefetch per 64-byte line of the stream, DPFD elements ahead */
            if (((k * es) & 63) == 0) _mm_prefetch((const char *)w + (base[c] + k + DPFD) * es, _MM_HINT_T0);
#endif
            __m512 wv = wload(dt, w, base[c] + k);
            #pragma GCC unroll 16
            for (int r = 0; r < R; r++) acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);
        }
    }
    if (tail) {
        __m512 xv[DR];
        #pragma GCC unroll 16
        for (int r = 0; r < R; r++) xv[r] = _mm512_maskz_loadu_ps(tail, x + (size_t)r * K + kfull);
        #pragma GCC unroll 16
        for (int c = 0; c < DC; c++) {
            if (c >= nc) break;
            __m512 wv = wload_m(dt, w, base[c] + kfull, tail);
            #pragma GCC unroll 16
            for (int r = 0; r < R; r++) acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);
        }
    }
    #pragma GCC unroll 16
    for (int r = 0; r < R; r++)
        #pragma GCC unroll 16
        for (int c = 0; c < DC; c++)
            if (c < nc) out[(size_t)r * O + o + c * cs] = hsum16(acc[r][c]);
}

/* columns [o0, o1) as DC segments of S = ceil(n / DC) rows: tile j takes row j of each
 * segment; only the last segment can be short, so the valid columns of a tile are a prefix.
 * The n rows go through each tile in groups of at most DR (the weights of a tile are read
 * from memory once and from L1 by the later groups). */
AI void decode_range(ds_dtype dt, int n, float *out, const float *x, const Weight *W, int o0, int o1) {
    const int K = W->cols, O = W->rows, nc_all = o1 - o0, S = (nc_all + DC - 1) / DC;
    for (int j = 0; j < S; j++) {
        int nc = 0;
        while (nc < DC && nc * S + j < nc_all) nc++;
        for (int i = 0; i < n; i += DR) {
            const float *xi = x + (size_t)i * K;
            float *oi = out + (size_t)i * O;
            switch (n - i < DR ? n - i : DR) {
#if DR >= 6
            case 6: decode_tile(dt, 6, nc, oi, O, xi, W->host, K, o0 + j, S); break;
            case 5: decode_tile(dt, 5, nc, oi, O, xi, W->host, K, o0 + j, S); break;
#endif
#if DR >= 4
            case 4: decode_tile(dt, 4, nc, oi, O, xi, W->host, K, o0 + j, S); break;
#endif
            case 3: decode_tile(dt, 3, nc, oi, O, xi, W->host, K, o0 + j, S); break;
            case 2: decode_tile(dt, 2, nc, oi, O, xi, W->host, K, o0 + j, S); break;
            default: decode_tile(dt, 1, nc, oi, O, xi, W->host, K, o0 + j, S); break;
            }
        }
    }
}

#define DECODE_FN(name, dt)                                                                               \
    static void name(float *out, const float *x, const Weight *W, int R, int o0, int o1) {                \
        if (R == 1) decode_range(dt, 1, out, x, W, o0, o1);                                               \
        else decode_range(dt, R, out, x, W, o0, o1);                                                      \
    }
DECODE_FN(decode_bf16, DS_BF16)
DECODE_FN(decode_f16, DS_F16)
DECODE_FN(decode_f32, DS_F32)

static void decode_cols(float *out, const float *x, const Weight *W, int R, int o0, int o1) {
    switch (W->dtype) {
    case DS_BF16: decode_bf16(out, x, W, R, o0, o1); break;
    case DS_F16: decode_f16(out, x, W, R, o0, o1); break;
    default: decode_f32(out, x, W, R, o0, o1); break;
    }
}

/* ---- prefill: NP-column F32 panels, TR x NP register tiles ---- */

#ifndef KC
#define KC 1024     /* k per panel block (multiple of 16): NP x KC floats, in L1/L2 */
#endif
#ifndef RB_BYTES
#define RB_BYTES (768 * 1024)  /* x block (rows x K floats) kept in L2 while the panels pass */
#endif
#define RB_MAX 128   /* rows per block */
#ifndef NP
#define NP 6        /* panel columns = tile columns */
#endif
#ifndef TR
#define TR 4        /* tile rows */
#endif
#define NACC (TR * NP)
#define NRED ((NACC + 15) / 16)  /* reduction networks per tile */

/* widen W[o..o+NP)[k0..k0+kn) into pan[c][0..knp) (knp = kn rounded up to 16, zero padded;
 * rows past O are zeros) */
static void panel_widen(float *pan, int knp, const Weight *W, int o, int k0, int kn) {
    const int K = W->cols, O = W->rows;
    const int kf = kn & ~15;
    const __mmask16 tail = (__mmask16)((1u << (kn & 15)) - 1);
    for (int c = 0; c < NP; c++) {
        float *p = pan + (size_t)c * knp;
        if (o + c >= O) { memset(p, 0, sizeof(float) * knp); continue; }
        size_t off = (size_t)(o + c) * K + k0;
        switch (W->dtype) {
        case DS_BF16:
            for (int k = 0; k < kf; k += 16) _mm512_store_ps(p + k, wload(DS_BF16, W->host, off + k));
            if (tail) _mm512_store_ps(p + kf, wload_m(DS_BF16, W->host, off + kf, tail));
            break;
        case DS_F16:
            for (int k = 0; k < kf; k += 16) _mm512_store_ps(p + k, wload(DS_F16, W->host, off + k));
            if (tail) _mm512_store_ps(p + kf, wload_m(DS_F16, W->host, off + kf, tail));
            break;
        default:
            for (int k = 0; k < kf; k += 16) _mm512_store_ps(p + k, wload(DS_F32, W->host, off + k));
            if (tail) _mm512_store_ps(p + kf, wload_m(DS_F32, W->host, off + kf, tail));
            break;
        }
    }
}

/* R rows (1..TR) x NP columns over one k block: full steps, then a masked step when the block
 * ends at K with K % 16 != 0 (x beyond K must not be read: it may be anything). */
AI void tile_kblock(int R, __m512 acc[TR][NP], const float *x, size_t ldx, const float *pan, int knp, int nfull,
                    __mmask16 tail) {
    for (int s = 0; s < nfull; s++) {
        __m512 wv[NP];
        #pragma GCC unroll 16
        for (int c = 0; c < NP; c++) wv[c] = _mm512_load_ps(pan + (size_t)c * knp + 16 * s);
        #pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            __m512 xv = _mm512_loadu_ps(x + (size_t)r * ldx + 16 * s);
            #pragma GCC unroll 16
            for (int c = 0; c < NP; c++) acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
        }
    }
    if (tail) {
        __m512 wv[NP];
        #pragma GCC unroll 16
        for (int c = 0; c < NP; c++) wv[c] = _mm512_load_ps(pan + (size_t)c * knp + 16 * nfull);
        #pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            __m512 xv = _mm512_maskz_loadu_ps(tail, x + (size_t)r * ldx + 16 * nfull);
            #pragma GCC unroll 16
            for (int c = 0; c < NP; c++) acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
        }
    }
}

/* One R x NP tile over k block [k0, k0+kn): acc from/to spill (k blocks before/after) or
 * reduced into out on the last block. */
AI void tile_run(int R, float *out, int O, int nc, const float *x, int K, const float *pan, int knp, int k0, int kn,
                 float *spill, bool first, bool last) {
    __m512 acc[TR][NP];
    #pragma GCC unroll 16
    for (int r = 0; r < R; r++)
        #pragma GCC unroll 16
        for (int c = 0; c < NP; c++) acc[r][c] = first ? _mm512_setzero_ps() : _mm512_load_ps(spill + (r * NP + c) * 16);
    const int nfull = kn >> 4;
    const __mmask16 tail = (__mmask16)((1u << (kn & 15)) - 1);
    tile_kblock(R, acc, x + k0, (size_t)K, pan, knp, nfull, tail);
    if (!last) {
        #pragma GCC unroll 16
        for (int r = 0; r < R; r++)
            #pragma GCC unroll 16
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

static void tile_any(int R, float *out, int O, int nc, const float *x, int K, const float *pan, int knp, int k0, int kn,
                     float *spill, bool first, bool last) {
    switch (R) {
#if TR >= 8
    case 8: tile_run(8, out, O, nc, x, K, pan, knp, k0, kn, spill, first, last); break;
#endif
#if TR >= 7
    case 7: tile_run(7, out, O, nc, x, K, pan, knp, k0, kn, spill, first, last); break;
#endif
#if TR >= 6
    case 6: tile_run(6, out, O, nc, x, K, pan, knp, k0, kn, spill, first, last); break;
#endif
#if TR >= 5
    case 5: tile_run(5, out, O, nc, x, K, pan, knp, k0, kn, spill, first, last); break;
#endif
#if TR >= 4
    case 4: tile_run(4, out, O, nc, x, K, pan, knp, k0, kn, spill, first, last); break;
#endif
    case 3: tile_run(3, out, O, nc, x, K, pan, knp, k0, kn, spill, first, last); break;
    case 2: tile_run(2, out, O, nc, x, K, pan, knp, k0, kn, spill, first, last); break;
    default: tile_run(1, out, O, nc, x, K, pan, knp, k0, kn, spill, first, last); break;
    }
}

/* rows [0, n) x columns [o0, o1) */
static void prefill_cols(float *out, const float *x, const Weight *W, int n, int o0, int o1) {
    const int K = W->cols, O = W->rows;
    float pan[NP * KC] __attribute__((aligned(64)));
    float spill[RB_MAX * NP * 16] __attribute__((aligned(64)));
    /* rows per block: the block of x (rb x K floats) stays in L2 while all panels pass */
    int rb = (int)(RB_BYTES / ((size_t)K * sizeof(float)));
    rb = rb < TR ? TR : rb > RB_MAX ? RB_MAX : rb - rb % TR;
    /* equal blocks (a short last block would re-read every weight panel for a few tiles) */
    const int nblk = (n + rb - 1) / rb;
    rb = ((n + nblk - 1) / nblk + TR - 1) / TR * TR;
    for (int i0 = 0; i0 < n; i0 += rb) {
        int i1 = i0 + rb < n ? i0 + rb : n;
        for (int o = o0; o < o1; o += NP) {
            int nc = o1 - o < NP ? o1 - o : NP;
            for (int k0 = 0; k0 < K; k0 += KC) {
                int kn = K - k0 < KC ? K - k0 : KC, knp = (kn + 15) & ~15;
                panel_widen(pan, knp, W, o, k0, kn);
                /* prefetch the next panel while this one's tiles run (kernels.h) */
                int no = o, nk0 = k0 + KC;
                if (nk0 >= K) { no = o + NP; nk0 = 0; }
                if (no >= o1) no = o0;
                const int nnc = o1 - no < NP ? o1 - no : NP, nkn = K - nk0 < KC ? K - nk0 : KC;
                const int ntiles = (i1 - i0 + TR - 1) / TR;
                const size_t es = W->dtype == DS_F32 ? 4 : 2;
                for (int i = i0; i < i1; i += TR) {
                    int R = i1 - i < TR ? i1 - i : TR;
                    kern_prefetch_part((const char *)W->host + ((size_t)no * K + nk0) * es, (size_t)nkn * es, (size_t)K * es, nnc,
                                       (i - i0) / TR, ntiles);
                    tile_any(R, out + (size_t)i * O + o, O, nc, x + (size_t)i * K, K, pan, knp, k0, kn,
                             spill + (size_t)(i - i0) * NP * 16, k0 == 0, k0 + kn >= K);
                }
            }
        }
    }
}

/* Thread t of T: its contiguous range of output columns (multiples of 16) of W. */
static inline void part_range(int O, int t, int T, int *o0, int *o1) {
    const int nchunk = (O + 15) / 16;
    int c0 = (int)((long)nchunk * t / T), c1 = (int)((long)nchunk * (t + 1) / T);
    *o0 = c0 * 16;
    *o1 = c1 * 16 < O ? c1 * 16 : O;
}

static void matmul_part(float *out, const float *x, const Weight *w, int n, int t, int T) {
    int o0, o1;
    part_range(w->rows, t, T, &o0, &o1);
    if (o0 >= o1) return;
    if (n <= DN_MAX) decode_cols(out, x, w, n, o0, o1);
    else prefill_cols(out, x, w, n, o0, o1);
}

void kern_matmul_avx512(float *out, const float *x, const Weight *w, int n) {
    const bool par = (size_t)w->rows * w->cols * (size_t)n >= 65536;
    #pragma omp parallel if (par)
    matmul_part(out, x, w, n, omp_get_thread_num(), omp_get_num_threads());
}

/* count matmuls of the same x in ONE parallel region (each thread its column range of each
 * weight, so the bytes per thread stay balanced); act: outs[0] = silu(outs[0]) * outs[1] on
 * the thread's own columns right after (same columns of both: same rows count). */
void kern_matmul_multi_avx512(float *const *outs, const float *x, const Weight *const *ws, int count, int n, int act) {
    size_t work = 0;
    for (int j = 0; j < count; j++) work += (size_t)ws[j]->rows * ws[j]->cols * (size_t)n;
    #pragma omp parallel if (work >= 65536)
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        for (int j = 0; j < count; j++) matmul_part(outs[j], x, ws[j], n, t, T);
        if (act == KERN_ACT_SWIGLU) {
            int o0, o1, O = ws[0]->rows;
            part_range(O, t, T, &o0, &o1);
            for (int i = 0; i < n && o0 < o1; i++)
                kern_swiglu_avx512(outs[0] + (size_t)i * O + o0, outs[0] + (size_t)i * O + o0, outs[1] + (size_t)i * O + o0,
                                   (size_t)(o1 - o0));
        }
    }
}

float kern_dot_f32_avx512(const float *a, const float *b, int n) {
    __m512 acc = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= n; k += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), _mm512_loadu_ps(b + k), acc);
    if (k < n) {
        __mmask16 m = (__mmask16)((1u << (n - k)) - 1);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + k), _mm512_maskz_loadu_ps(m, b + k), acc);
    }
    return hsum16(acc);
}

/* (x[0] is not NaN: kern_argmax_f32) */
int32_t kern_argmax_f32_avx512(const float *x, int n) {
    __m512 m = _mm512_set1_ps(x[0]);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        m = _mm512_mask_max_ps(m, _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), m, v);
    }
    float mx = _mm512_reduce_max_ps(m);
    for (int k = i; k < n; k++) mx = x[k] > mx ? x[k] : mx;
    const __m512 mv = _mm512_set1_ps(mx);
    for (int k = 0; k + 16 <= n; k += 16) {
        __mmask16 eq = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + k), mv, _CMP_EQ_OQ);
        if (eq) return k + __builtin_ctz(eq);
    }
    for (int k = i; k < n; k++) if (x[k] == mx) return k;
    return 0; /* not reached: mx is one of the values */
}

/* ---- elementwise ---- */

/* out = w * (x * r), the two roundings of the portable expression (no FMA) */
void kern_scale_mul_avx512(float *out, const float *x, float r, const Weight *w, int dim) {
    const __m512 rv = _mm512_set1_ps(r);
    int k = 0;
    for (; k + 16 <= dim; k += 16) {
        __m512 wv = w->dtype == DS_BF16 ? wload(DS_BF16, w->host, k) : w->dtype == DS_F16 ? wload(DS_F16, w->host, k) : wload(DS_F32, w->host, k);
        _mm512_storeu_ps(out + k, _mm512_mul_ps(wv, _mm512_mul_ps(_mm512_loadu_ps(x + k), rv)));
    }
    for (; k < dim; k++) out[k] = kern_weight_at(w, k) * (x[k] * r);
}

void kern_add_avx512(float *x, const float *y, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_add_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    for (; i < n; i++) x[i] += y[i];
}

void kern_rope_apply_avx512(float *x, const float *c, const float *s, int n_heads, int head_dim) {
    const int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * head_dim;
        int j = 0;
        for (; j + 16 <= half; j += 16) {
            __m512 a = _mm512_loadu_ps(v + j), b = _mm512_loadu_ps(v + j + half);
            __m512 cv = _mm512_loadu_ps(c + j), sv = _mm512_loadu_ps(s + j);
            _mm512_storeu_ps(v + j, _mm512_sub_ps(_mm512_mul_ps(a, cv), _mm512_mul_ps(b, sv)));
            _mm512_storeu_ps(v + j + half, _mm512_add_ps(_mm512_mul_ps(b, cv), _mm512_mul_ps(a, sv)));
        }
        for (; j < half; j++) {
            float a = v[j], b = v[j + half];
            v[j] = a * c[j] - b * s[j];
            v[j + half] = b * c[j] + a * s[j];
        }
    }
}

/* ---- exp ---- */

/* e^x for 16 lanes, deterministic (no table, no libm): x = n ln2 + r, |r| <= ln2/2, e^r by
 * the degree-6 minimax polynomial of Cephes' expf (max relative error ~1.5e-7, 1-2 ulp),
 * scaled by 2^n. x is clamped to [-87.3, 88.7]: callers mask lanes that must be exactly 0. */
AI __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3365447504f)), _mm512_set1_ps(88.7228391117f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* out = silu(gate) * up = gate / (1 + e^-gate) * up */
void kern_swiglu_avx512(float *out, const float *gate, const float *up, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 g = _mm512_loadu_ps(gate + i);
        __m512 s = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(s, _mm512_loadu_ps(up + i)));
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
        __m512 s = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, up + i)));
    }
}

/* ---- attention ---- */

/* Per (query, head), keys in fixed blocks of 16 aligned to key 0:
 *   s = (q . k_j) for the block (each dot: 16-lane FMA over head_dim, hsum16 tree), times scale
 *   m' = max(m, max s); c = e^(m - m'); p = e^(s - m') (0 for keys past kv_len)
 *   l = l c + hsum16(p); acc = acc c + sum_j p_j v_j (j increasing, FMA)
 *   out = acc / l
 * The blocks depend only on the key index, so a query's result depends only on its q, its
 * slot's cache and its kv_len, never on the other queries or the thread count. Queries are
 * processed in chunks that share each K/V block while it is in L1 (GQA: the heads of a group
 * too). */
#define AQ 8     /* queries per work item */
#define AB 16    /* keys per block */
#define AG 4     /* heads of a GQA group per pass */
#define HD_MAX 256

typedef struct {
    float m, l;
} SoftState;

/* kb/vb: key j of the block at kb + j * ld; keys past nb are not read unless `padded` (a
 * zero-filled local copy), in which case all 16 scores are computed and the extra ones masked */
AI void attn_block(const float *qv, float *acc, SoftState *st, const float *kb, const float *vb, size_t ld, int nb,
                   int hd, float scale, bool padded) {
    __m512 sacc[AB];
    #pragma GCC unroll 16
    for (int j = 0; j < AB; j++) sacc[j] = _mm512_setzero_ps();
    for (int d = 0; d < hd; d += 16) {
        __m512 q = _mm512_loadu_ps(qv + d);
        #pragma GCC unroll 16
        for (int j = 0; j < AB; j++)
            if (padded || j < nb) sacc[j] = _mm512_fmadd_ps(q, _mm512_loadu_ps(kb + (size_t)j * ld + d), sacc[j]);
    }
    const __mmask16 valid = (__mmask16)((1u << nb) - 1);
    __m512 s = _mm512_mul_ps(hsum16x16(sacc), _mm512_set1_ps(scale));
    s = _mm512_mask_blend_ps(valid, _mm512_set1_ps(-INFINITY), s);
    float mb = _mm512_reduce_max_ps(s);   /* max is exact whatever the order */
    float mnew = st->m > mb ? st->m : mb;
    __m512 p = _mm512_maskz_mov_ps(valid, exp16(_mm512_sub_ps(s, _mm512_set1_ps(mnew))));
    float c = 0.0f;
    if (st->m != -INFINITY) c = _mm512_cvtss_f32(exp16(_mm512_set1_ps(st->m - mnew)));
    st->l = st->l * c + hsum16(p);
    st->m = mnew;
    float pj[AB] __attribute__((aligned(64)));
    _mm512_store_ps(pj, p);
    const __m512 cv = _mm512_set1_ps(c);
    /* 128 dims at a time in registers; per element: acc c, then + p_j v_j for j increasing */
    for (int d0 = 0; d0 < hd; d0 += 128) {
        const int nd = hd - d0 < 128 ? (hd - d0) / 16 : 8;
        __m512 a[8];
        #pragma GCC unroll 8
        for (int t = 0; t < 8; t++)
            if (t < nd) a[t] = _mm512_mul_ps(_mm512_load_ps(acc + d0 + 16 * t), cv);
        for (int j = 0; j < nb; j++) {
            const __m512 pv = _mm512_set1_ps(pj[j]);
            const float *vj = vb + (size_t)j * ld + d0;
            #pragma GCC unroll 8
            for (int t = 0; t < 8; t++)
                if (t < nd) a[t] = _mm512_fmadd_ps(pv, _mm512_loadu_ps(vj + 16 * t), a[t]);
        }
        #pragma GCC unroll 8
        for (int t = 0; t < 8; t++)
            if (t < nd) _mm512_store_ps(acc + d0 + 16 * t, a[t]);
    }
}

/* the softmax step of attn_block for one (query, head) given its 16 raw scores (before the
 * scale): updates st, writes p to pj, returns c */
AI float soft_update(__m512 raw, int nb, SoftState *st, float scale, float *pj) {
    const __mmask16 valid = (__mmask16)((1u << nb) - 1);
    __m512 s = _mm512_mul_ps(raw, _mm512_set1_ps(scale));
    s = _mm512_mask_blend_ps(valid, _mm512_set1_ps(-INFINITY), s);
    float mb = _mm512_reduce_max_ps(s);
    float mnew = st->m > mb ? st->m : mb;
    __m512 p = _mm512_maskz_mov_ps(valid, exp16(_mm512_sub_ps(s, _mm512_set1_ps(mnew))));
    float c = 0.0f;
    if (st->m != -INFINITY) c = _mm512_cvtss_f32(exp16(_mm512_set1_ps(st->m - mnew)));
    st->l = st->l * c + hsum16(p);
    st->m = mnew;
    _mm512_store_ps(pj, p);
    return c;
}

/* attn_block for TWO (query, head) pairs a, b that read the same K/V block (two heads of a GQA
 * group, or two queries of one slot on the local copy): every K and V vector is loaded once
 * for both, and the two dependency chains interleave. Each pair's arithmetic is exactly
 * attn_block's: the same FMA chain per score, the same hsum16 tree per score (hsum16x16
 * reduces every vector by the same tree whatever vectors share the call), the same softmax
 * step, and acc * c then + p_j v_j for its own j < nb only. Needs hd % 16 == 0, hd <= 128 per
 * register pass (larger hd: passes of 128). Unpadded: na == nbb. */
AI void attn_block2(const float *qa, const float *qb, float *acca, float *accb, SoftState *sta, SoftState *stb,
                    const float *kb, const float *vb, size_t ld, int na, int nbb, int hd, float scale, bool padded) {
    __m512 r[2];
    for (int half = 0; half < 2; half++) {
        __m512 sacc[16];
        #pragma GCC unroll 16
        for (int j = 0; j < 16; j++) sacc[j] = _mm512_setzero_ps();
        const int nmax = na > nbb ? na : nbb;
        for (int d = 0; d < hd; d += 16) {
            const __m512 a = _mm512_loadu_ps(qa + d), b = _mm512_loadu_ps(qb + d);
            #pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                const int key = half * 8 + j;
                if (padded || key < nmax) {
                    const __m512 kv = _mm512_loadu_ps(kb + (size_t)key * ld + d);
                    sacc[j] = _mm512_fmadd_ps(a, kv, sacc[j]);
                    sacc[8 + j] = _mm512_fmadd_ps(b, kv, sacc[8 + j]);
                }
            }
        }
        r[half] = hsum16x16(sacc); /* lanes 0-7: a's keys half*8.., lanes 8-15: b's */
    }
    const __m512 rawa = _mm512_shuffle_f32x4(r[0], r[1], 0x44), rawb = _mm512_shuffle_f32x4(r[0], r[1], 0xEE);
    float pja[AB] __attribute__((aligned(64))), pjb[AB] __attribute__((aligned(64)));
    const float ca = soft_update(rawa, na, sta, scale, pja), cb = soft_update(rawb, nbb, stb, scale, pjb);
    const __m512 cva = _mm512_set1_ps(ca), cvb = _mm512_set1_ps(cb);
    const int nmin = na < nbb ? na : nbb;
    for (int d0 = 0; d0 < hd; d0 += 128) {
        const int nd = hd - d0 < 128 ? (hd - d0) / 16 : 8;
        __m512 xa[8], xb[8];
        #pragma GCC unroll 8
        for (int t = 0; t < 8; t++)
            if (t < nd) {
                xa[t] = _mm512_mul_ps(_mm512_load_ps(acca + d0 + 16 * t), cva);
                xb[t] = _mm512_mul_ps(_mm512_load_ps(accb + d0 + 16 * t), cvb);
            }
        int j = 0;
        for (; j < nmin; j++) {
            const __m512 pa = _mm512_set1_ps(pja[j]), pb = _mm512_set1_ps(pjb[j]);
            const float *vj = vb + (size_t)j * ld + d0;
            #pragma GCC unroll 8
            for (int t = 0; t < 8; t++)
                if (t < nd) {
                    const __m512 v = _mm512_loadu_ps(vj + 16 * t);
                    xa[t] = _mm512_fmadd_ps(pa, v, xa[t]);
                    xb[t] = _mm512_fmadd_ps(pb, v, xb[t]);
                }
        }
        for (int ja = j; ja < na; ja++) {
            const __m512 pa = _mm512_set1_ps(pja[ja]);
            #pragma GCC unroll 8
            for (int t = 0; t < 8; t++)
                if (t < nd) xa[t] = _mm512_fmadd_ps(pa, _mm512_loadu_ps(vb + (size_t)ja * ld + d0 + 16 * t), xa[t]);
        }
        for (int jb = j; jb < nbb; jb++) {
            const __m512 pb = _mm512_set1_ps(pjb[jb]);
            #pragma GCC unroll 8
            for (int t = 0; t < 8; t++)
                if (t < nd) xb[t] = _mm512_fmadd_ps(pb, _mm512_loadu_ps(vb + (size_t)jb * ld + d0 + 16 * t), xb[t]);
        }
        #pragma GCC unroll 8
        for (int t = 0; t < 8; t++)
            if (t < nd) {
                _mm512_store_ps(acca + d0 + 16 * t, xa[t]);
                _mm512_store_ps(accb + d0 + 16 * t, xb[t]);
            }
    }
}

bool kern_attention_avx512_ok(int head_dim) { return head_dim % 16 == 0 && head_dim <= HD_MAX; }

void kern_attention_avx512(float *out, const float *q, const KvCache *kv, int layer, const int32_t *slot,
                           const int32_t *kv_len, int n, int n_heads, int n_kv_heads, int head_dim) {
    DS_ASSERT(kern_attention_avx512_ok(head_dim) && n_heads % n_kv_heads == 0);
    const int group = n_heads / n_kv_heads, hd = head_dim, ld = kv->kv_dim;
    const float scale = 1.0f / sqrtf((float)hd);
    const int nchunks = (n + AQ - 1) / AQ, items = nchunks * n_kv_heads;
    long work = 0;
    for (int i = 0; i < n; i++) work += kv_len[i];
    work *= (long)n_heads * hd;
    #pragma omp parallel for schedule(dynamic, 1) if (work >= 65536 && items > 1)
    for (int it = 0; it < items; it++) {
        const int g = it % n_kv_heads, i0 = (it / n_kv_heads) * AQ, i1 = i0 + AQ < n ? i0 + AQ : n;
        const int G = group > AG ? AG : group;  /* heads processed together (state on stack) */
        /* a local copy of the K/V block (keys 4 KB apart in the cache share L1 sets), worth it
         * when several (query, head) pairs use it */
        const bool copy = (i1 - i0) * G >= 4;
        float kloc[AB * HD_MAX] __attribute__((aligned(64))), vloc[AB * HD_MAX] __attribute__((aligned(64)));
        for (int h0 = g * group; h0 < (g + 1) * group; h0 += G) {
            const int nh = (g + 1) * group - h0 < G ? (g + 1) * group - h0 : G;
            float acc[AQ * AG][HD_MAX] __attribute__((aligned(64)));
            SoftState st[AQ * AG];
            int maxlen = 0;
            for (int i = i0; i < i1; i++) {
                DS_ASSERT(kv_len[i] >= 1 && kv_len[i] <= kv->max_ctx && slot[i] >= 0 && slot[i] < kv->n_slots);
                if (kv_len[i] > maxlen) maxlen = kv_len[i];
            }
            for (int a = 0; a < (i1 - i0) * G; a++) {
                st[a] = (SoftState){-INFINITY, 0.0f};
                memset(acc[a], 0, sizeof(float) * hd);
            }
            for (int j0 = 0; j0 < maxlen; j0 += AB) {
                int have_slot = -1, have_nb = 0;
                for (int i = i0; i < i1; i++) {
                    if (j0 >= kv_len[i]) continue;
                    int nb = kv_len[i] - j0 < AB ? kv_len[i] - j0 : AB;
                    size_t base = (((size_t)layer * kv->n_slots + slot[i]) * kv->max_ctx + j0) * ld + (size_t)g * hd;
                    const float *kb = kv->k + base, *vb = kv->v + base;
                    if (copy) {
                        if (slot[i] != have_slot || nb > have_nb) {
                            for (int j = 0; j < AB; j++) {
                                if (j < nb) {
                                    memcpy(kloc + j * hd, kb + (size_t)j * ld, sizeof(float) * hd);
                                    memcpy(vloc + j * hd, vb + (size_t)j * ld, sizeof(float) * hd);
                                } else {
                                    memset(kloc + j * hd, 0, sizeof(float) * hd);
                                    memset(vloc + j * hd, 0, sizeof(float) * hd);
                                }
                            }
                            have_slot = slot[i];
                            have_nb = nb;
                        }
                        int hh = 0;
                        for (; hh + 2 <= nh; hh += 2) {
                            int a = (i - i0) * G + hh;
                            const float *qa = q + ((size_t)i * n_heads + h0 + hh) * hd;
                            attn_block2(qa, qa + hd, acc[a], acc[a + 1], &st[a], &st[a + 1], kloc, vloc, (size_t)hd, nb, nb, hd,
                                        scale, true);
                        }
                        for (; hh < nh; hh++) {
                            int a = (i - i0) * G + hh;
                            attn_block(q + ((size_t)i * n_heads + h0 + hh) * hd, acc[a], &st[a], kloc, vloc, (size_t)hd, nb, hd,
                                       scale, true);
                        }
                    } else {
                        int hh = 0;
                        for (; hh + 2 <= nh; hh += 2) {
                            int a = (i - i0) * G + hh;
                            const float *qa = q + ((size_t)i * n_heads + h0 + hh) * hd;
                            attn_block2(qa, qa + hd, acc[a], acc[a + 1], &st[a], &st[a + 1], kb, vb, (size_t)ld, nb, nb, hd, scale,
                                        false);
                        }
                        for (; hh < nh; hh++) {
                            int a = (i - i0) * G + hh;
                            attn_block(q + ((size_t)i * n_heads + h0 + hh) * hd, acc[a], &st[a], kb, vb, (size_t)ld, nb, hd,
                                       scale, false);
                        }
                    }
                }
            }
            for (int i = i0; i < i1; i++)
                for (int hh = 0; hh < nh; hh++) {
                    int a = (i - i0) * G + hh;
                    float *o = out + ((size_t)i * n_heads + h0 + hh) * hd;
                    __m512 inv = _mm512_set1_ps(1.0f / st[a].l);
                    for (int d = 0; d < hd; d += 16) _mm512_storeu_ps(o + d, _mm512_mul_ps(_mm512_load_ps(acc[a] + d), inv));
                }
        }
    }
}
