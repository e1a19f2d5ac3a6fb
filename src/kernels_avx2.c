/* kernels_avx2.c - AVX2 + FMA + F16C kernels (compiled with -mavx2 -mfma -mf16c, used only
 * when cpuid says the CPU has all three and no AVX-512; see kernels.h for the arithmetic every
 * path keeps).
 *
 * The 16 lanes of every dot product are two 8-wide halves: lane k mod 16 < 8 lives in the
 * "lo" accumulator, the others in "hi". Output (i, o) of a matmul is
 *     lo = hi = 0; for each 16-wide k step: lo = fma(x[k..k+7], W[k..k+7], lo),
 *                                           hi = fma(x[k+8..k+15], W[k+8..k+15], hi)
 *     (the last step zero-padded past K); out = hsum16(lo, hi)
 * with hsum16 the fixed tree (lane j + lane j+8, i.e. lo + hi, then +4, +2, +1). The two
 * halves are independent chains, so a kernel may run them one after the other (the prefill
 * tiles do, to fit 12 accumulators in 16 registers); every kernel below computes exactly this
 * for every (i, o), so rows are independent of the batch and of the thread count.
 *
 * Decode (1-3 rows) streams weight rows, widened to F32 in registers, DC rows at a time from
 * DC far-apart segments of the thread's range (independent hardware prefetch streams).
 * Prefill (4+ rows, e.g. a verification block): per thread, panels of NP weight rows x KC
 * are widened to F32 once into an L1-resident buffer and reused by every TR-row tile of a
 * row block sized to stay in L2; a tile is TR x NP accumulators, one half at a time, and the
 * block's first tile does the widening itself (with software prefetch), so the weight loads
 * overlap FMAs. A few rows (<= SMALL_N) on a cache-resident weight range (small models) go
 * through the decode tiles two rows at a time instead: measured faster at small K.
 * Elsewhere: attention (below), and the elementwise ops with the portable path's roundings. */
#include "kernels.h"

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

bool kern_avx2_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

/* ---- loads ---- */

/* 8 weights at element offset off, widened to F32 (dt is a compile-time constant at every
 * call site: the callers are instantiated per dtype) */
AI __m256 wload8(ds_dtype dt, const void *w, size_t off) {
    if (dt == DS_BF16)
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + off))), 16));
    if (dt == DS_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + off)));
    return _mm256_loadu_ps((const float *)w + off);
}

/* lanes [0, n) set (n may be <= 0 or >= 8) */
AI __m256i lane_mask(int n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }

/* the 16 elements of a row from k on, of which only n < 16 exist, zero-padded: a weight tail
 * copied into a local 16-element buffer (read as wload8 at 0 and 8) */
AI void wtail(ds_dtype dt, void *buf, const void *w, size_t off, int n) {
    size_t es = dt == DS_F32 ? 4 : 2;
    memset(buf, 0, 16 * es);
    memcpy(buf, (const char *)w + off * es, (size_t)n * es);
}

/* ---- the fixed reduction ---- */

/* hsum16 of the 16 lanes held as (lo, hi): (j, j+8), (j, j+4), (j, j+2), (j, j+1) */
AI float hsum16(__m256 lo, __m256 hi) {
    __m256 v = _mm256_add_ps(lo, hi);
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

/* the last three levels of that tree ((j, j+4), (j, j+2), (j, j+1)) for 8 vectors at once:
 * r[j] = tree(v[j]) (the same pairs added at every level as hsum16) */
AI __m256 hsum8x8(const __m256 v[8]) {
    __m256 t[4], u[2];
    #pragma GCC unroll 4
    for (int p = 0; p < 4; p++) /* t[p] = [v[2p] (j, j+4) x4 | v[2p+1] (j, j+4) x4] */
        t[p] = _mm256_add_ps(_mm256_permute2f128_ps(v[2 * p], v[2 * p + 1], 0x20),
                             _mm256_permute2f128_ps(v[2 * p], v[2 * p + 1], 0x31));
    #pragma GCC unroll 2
    for (int p = 0; p < 2; p++) /* lane half 0: [v[4p] (j,j+2) x2, v[4p+2] x2], half 1: v[4p+1], v[4p+3] */
        u[p] = _mm256_add_ps(_mm256_shuffle_ps(t[2 * p], t[2 * p + 1], 0x44), _mm256_shuffle_ps(t[2 * p], t[2 * p + 1], 0xEE));
    /* [v0, v2, v4, v6 | v1, v3, v5, v7] */
    __m256 r = _mm256_add_ps(_mm256_shuffle_ps(u[0], u[1], 0x88), _mm256_shuffle_ps(u[0], u[1], 0xDD));
    return _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* ---- decode: R (1..3) rows, DC weight rows streamed at a time ---- */

/* One tile: weight rows o + c * cs (c < nc <= DC), each the full K, both halves in registers
 * (R x DC x 2 accumulators: DC is 4, 3, 2 for R = 1, 2, 3). */
AI void decode_tile(ds_dtype dt, int R, int DC, int nc, float *out, int O, const float *x, const void *w, int K, int o,
                    int cs) {
    const int kfull = K & ~15, kt = K & 15;
    __m256 lo[3][4], hi[3][4];
    #pragma GCC unroll 4
    for (int r = 0; r < R; r++)
        #pragma GCC unroll 4
        for (int c = 0; c < DC; c++) lo[r][c] = hi[r][c] = _mm256_setzero_ps();
    size_t base[4];
    #pragma GCC unroll 4
    for (int c = 0; c < DC; c++) base[c] = (size_t)(o + (c < nc ? c : 0) * cs) * K;
    for (int k = 0; k < kfull; k += 16) {
        #pragma GCC unroll 4
        for (int c = 0; c < DC; c++) {
            if (c >= nc) break;
            const __m256 wl = wload8(dt, w, base[c] + k), wh = wload8(dt, w, base[c] + k + 8);
            #pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                lo[r][c] = _mm256_fmadd_ps(_mm256_loadu_ps(x + (size_t)r * K + k), wl, lo[r][c]);
                hi[r][c] = _mm256_fmadd_ps(_mm256_loadu_ps(x + (size_t)r * K + k + 8), wh, hi[r][c]);
            }
        }
    }
    if (kt) {
        const __m256i ml = lane_mask(kt), mh = lane_mask(kt - 8);
        float wb[16] __attribute__((aligned(32)));
        #pragma GCC unroll 4
        for (int c = 0; c < DC; c++) {
            if (c >= nc) break;
            wtail(dt, wb, w, base[c] + kfull, kt);
            const __m256 wl = wload8(dt, wb, 0), wh = wload8(dt, wb, 8);
            #pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                lo[r][c] = _mm256_fmadd_ps(_mm256_maskload_ps(x + (size_t)r * K + kfull, ml), wl, lo[r][c]);
                hi[r][c] = _mm256_fmadd_ps(_mm256_maskload_ps(x + (size_t)r * K + kfull + 8, mh), wh, hi[r][c]);
            }
        }
    }
    /* R x DC <= 8 sums reduced together: hsum8x8 adds exactly hsum16's pairs */
    __m256 v[8];
    #pragma GCC unroll 8
    for (int a = 0; a < 8; a++) v[a] = a < R * DC ? _mm256_add_ps(lo[a / DC][a % DC], hi[a / DC][a % DC]) : _mm256_setzero_ps();
    float res[8] __attribute__((aligned(32)));
    _mm256_store_ps(res, hsum8x8(v));
    for (int r = 0; r < R; r++)
        for (int c = 0; c < nc; c++) out[(size_t)r * O + o + c * cs] = res[r * DC + c];
}

/* columns [o0, o1) as DC segments of S = ceil(n / DC) rows: tile j takes row j of each
 * segment; only the last segment can be short, so the valid columns of a tile are a prefix */
AI void decode_range(ds_dtype dt, int R, int DC, float *out, const float *x, const Weight *W, int o0, int o1) {
    const int K = W->cols, O = W->rows, n = o1 - o0, S = (n + DC - 1) / DC;
    for (int j = 0; j < S; j++) {
        int nc = 0;
        while (nc < DC && nc * S + j < n) nc++;
        decode_tile(dt, R, DC, nc, out, O, x, W->host, K, o0 + j, S);
    }
}

#define DECODE_FN(name, dt)                                                                \
    static void name(float *out, const float *x, const Weight *W, int R, int o0, int o1) { \
        if (R == 1) decode_range(dt, 1, 4, out, x, W, o0, o1);                             \
        else if (R == 2) decode_range(dt, 2, 3, out, x, W, o0, o1);                        \
        else decode_range(dt, 3, 2, out, x, W, o0, o1);                                    \
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

/* ---- prefill: NP-column F32 panels, TR x NP register tiles, one half at a time ---- */

#ifndef KC
#define KC 512      /* k per panel block (multiple of 16): NP x KC floats and TR x KC of x in L1 */
#endif
#ifndef RB_BYTES
#define RB_BYTES (256 * 1024)  /* x block (rows x K floats) kept in L2 while the panels pass */
#endif
#define RB_MAX 128  /* rows per block */
#ifndef SMALL_N
#define SMALL_N 16  /* up to this many rows, a weight range of at most SMALL_BYTES ... */
#endif
#ifndef SMALL_BYTES
#define SMALL_BYTES (160 * 1024) /* ... goes through the decode tiles, 2 rows at a time */
#endif
#ifndef PFD
#define PFD 512     /* weight elements between a fused tile's software prefetch and its use */
#endif
#ifndef PF_AHEAD
#define PF_AHEAD 1  /* panels between a prefetch and its use */
#endif
#define NP 3        /* panel columns = tile columns */
#define TR 4        /* tile rows: TR x NP accumulators + NP weights + 1 = 16 registers */

/* widen W[o..o+NP)[k0..k0+kn) into pan[c][0..knp) (knp = kn rounded up to 16, zero padded;
 * rows past O are zeros) */
AI void panel_widen_dt(ds_dtype dt, float *pan, int knp, const Weight *W, int o, int k0, int kn) {
    const int K = W->cols, O = W->rows, kf = kn & ~15, kt = kn & 15;
    for (int c = 0; c < NP; c++) {
        float *p = pan + (size_t)c * knp;
        if (o + c >= O) { memset(p, 0, sizeof(float) * knp); continue; }
        size_t off = (size_t)(o + c) * K + k0;
        for (int k = 0; k < kf; k += 8) _mm256_store_ps(p + k, wload8(dt, W->host, off + k));
        if (kt) {
            float wb[16] __attribute__((aligned(32)));
            wtail(dt, wb, W->host, off + kf, kt);
            _mm256_store_ps(p + kf, wload8(dt, wb, 0));
            _mm256_store_ps(p + kf + 8, wload8(dt, wb, 8));
        }
    }
}

static void panel_widen(float *pan, int knp, const Weight *W, int o, int k0, int kn) {
    switch (W->dtype) {
    case DS_BF16: panel_widen_dt(DS_BF16, pan, knp, W, o, k0, kn); break;
    case DS_F16: panel_widen_dt(DS_F16, pan, knp, W, o, k0, kn); break;
    default: panel_widen_dt(DS_F32, pan, knp, W, o, k0, kn); break;
    }
}

/* One R x NP tile (R <= TR) over k block [k0, k0+kn), half h at a time: accumulators from/to
 * spill (k blocks before/after), or reduced into out on the last block. The masked step when
 * the block ends at K with K % 16 != 0 keeps x past K unread (it may be anything).
 * widen (dt's rows w + c K from the block start, all NP rows exist): the tile widens the
 * weights itself and stores them into the panel for the row block's other tiles, so the loads
 * from memory overlap its FMAs instead of stalling a separate widening pass. */
AI void tile_run(int R, ds_dtype dt, bool widen, float *out, int O, int nc, const float *x, int K, float *pan, int knp, int k0,
                 int kn, float *spill, bool first, bool last, const void *w) {
    const int nfull = kn >> 4, kt = kn & 15;
    x += k0;
    for (int h = 0; h < 2; h++) {
        __m256 acc[TR][NP];
        float *sp = spill + h * TR * NP * 8;
        #pragma GCC unroll 4
        for (int r = 0; r < R; r++)
            #pragma GCC unroll 4
            for (int c = 0; c < NP; c++) acc[r][c] = first ? _mm256_setzero_ps() : _mm256_load_ps(sp + (r * NP + c) * 8);
        float *ph = pan + 8 * h;
        const float *xh = x + 8 * h;
        for (int s = 0; s < nfull; s++) {
            __m256 wv[NP];
            if (widen && h == 0 && !(s & 1)) {
                /* each weight row's line PFD elements ahead; past the row's end, the same
                 * place in the next panel's row (rows are contiguous: it follows this one) */
                const int kk = k0 + 16 * s + PFD;
                const size_t es = dt == DS_F32 ? 4 : 2;
                #pragma GCC unroll 4
                for (int c = 0; c < NP; c++)
                    __builtin_prefetch((const char *)w + ((kk < K ? (size_t)c * K + 16 * s + PFD : (size_t)(c + NP) * K + (size_t)(kk - K) - (size_t)k0)) * es, 0, 3);
            }
            #pragma GCC unroll 4
            for (int c = 0; c < NP; c++) {
                if (widen) {
                    wv[c] = wload8(dt, w, (size_t)c * K + 16 * s + 8 * h);
                    _mm256_store_ps(ph + (size_t)c * knp + 16 * s, wv[c]);
                } else {
                    wv[c] = _mm256_load_ps(ph + (size_t)c * knp + 16 * s);
                }
            }
            #pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const __m256 xv = _mm256_loadu_ps(xh + (size_t)r * K + 16 * s);
                #pragma GCC unroll 4
                for (int c = 0; c < NP; c++) acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
            }
        }
        if (kt) {
            const __m256i m = lane_mask(kt - 8 * h);
            __m256 wv[NP];
            #pragma GCC unroll 4
            for (int c = 0; c < NP; c++) {
                if (widen) {
                    float wb[16] __attribute__((aligned(32)));
                    wtail(dt, wb, w, (size_t)c * K + 16 * nfull, kt);
                    wv[c] = wload8(dt, wb, 8 * h);
                    _mm256_store_ps(ph + (size_t)c * knp + 16 * nfull, wv[c]);
                } else {
                    wv[c] = _mm256_load_ps(ph + (size_t)c * knp + 16 * nfull);
                }
            }
            #pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const __m256 xv = _mm256_maskload_ps(xh + (size_t)r * K + 16 * nfull, m);
                #pragma GCC unroll 4
                for (int c = 0; c < NP; c++) acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
            }
        }
        #pragma GCC unroll 4
        for (int r = 0; r < R; r++)
            #pragma GCC unroll 4
            for (int c = 0; c < NP; c++) _mm256_store_ps(sp + (r * NP + c) * 8, acc[r][c]);
    }
    if (!last) return;
    /* the R x NP sums reduced 8 at a time (hsum8x8: exactly hsum16's pairs) */
    float res[2 * 8] __attribute__((aligned(32)));
    #pragma GCC unroll 2
    for (int g = 0; g < (R * NP + 7) / 8; g++) {
        __m256 v[8];
        #pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            const int a = 8 * g + j;
            v[j] = a < R * NP ? _mm256_add_ps(_mm256_load_ps(spill + a * 8), _mm256_load_ps(spill + a * 8 + TR * NP * 8)) : _mm256_setzero_ps();
        }
        _mm256_store_ps(res + 8 * g, hsum8x8(v));
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < nc; c++) out[(size_t)r * O + c] = res[r * NP + c];
}

#define TILE_R(dt, widen)                                                                                      \
    switch (R) {                                                                                               \
    case 4: tile_run(4, dt, widen, out, O, nc, x, K, pan, knp, k0, kn, spill, first, last, w); break;          \
    case 3: tile_run(3, dt, widen, out, O, nc, x, K, pan, knp, k0, kn, spill, first, last, w); break;          \
    case 2: tile_run(2, dt, widen, out, O, nc, x, K, pan, knp, k0, kn, spill, first, last, w); break;          \
    default: tile_run(1, dt, widen, out, O, nc, x, K, pan, knp, k0, kn, spill, first, last, w); break;         \
    }

/* w: NULL (the panel is filled) or the block start of the panel's first weight row */
static void tile_any(int R, ds_dtype dt, float *out, int O, int nc, const float *x, int K, float *pan, int knp, int k0, int kn,
                     float *spill, bool first, bool last, const void *w) {
    if (!w) TILE_R(DS_F32, false)
    else if (dt == DS_BF16) TILE_R(DS_BF16, true)
    else if (dt == DS_F16) TILE_R(DS_F16, true)
    else TILE_R(DS_F32, true)
}

/* rows [0, n) x columns [o0, o1) */
static void prefill_cols(float *out, const float *x, const Weight *W, int n, int o0, int o1) {
    const int K = W->cols, O = W->rows;
    float pan[NP * KC] __attribute__((aligned(32)));
    enum { SPILL_TILE = 2 * TR * NP * 8 };
    float spill[(RB_MAX / TR) * SPILL_TILE] __attribute__((aligned(32)));
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
                /* full panels: the row block's first tile widens them (tile_run) */
                const bool fused = nc == NP;
                if (!fused) panel_widen(pan, knp, W, o, k0, kn);
                /* prefetch the panel PF_AHEAD steps ahead while this one's tiles run (kernels.h):
                 * with few tiles per panel one panel ahead is too short to hide DRAM latency */
                int no = o, nk0 = k0;
                for (int a = 0; a < PF_AHEAD; a++) {
                    nk0 += KC;
                    if (nk0 >= K) { no += NP; nk0 = 0; }
                    if (no >= o1) no = o0;
                }
                const int nnc = o1 - no < NP ? o1 - no : NP, nkn = K - nk0 < KC ? K - nk0 : KC;
                const int ntiles = (i1 - i0 + TR - 1) / TR;
                const size_t es = W->dtype == DS_F32 ? 4 : 2;
                for (int i = i0; i < i1; i += TR) {
                    int R = i1 - i < TR ? i1 - i : TR;
                    if (!fused) kern_prefetch_part((const char *)W->host + ((size_t)no * K + nk0) * es, (size_t)nkn * es, (size_t)K * es, nnc,
                                       (i - i0) / TR, ntiles);
                    const void *wsrc = fused && i == i0 ? (const char *)W->host + ((size_t)o * K + k0) * es : NULL;
                    tile_any(R, W->dtype, out + (size_t)i * O + o, O, nc, x + (size_t)i * K, K, pan, knp, k0, kn,
                             spill + (size_t)((i - i0) / TR) * SPILL_TILE, k0 == 0, k0 + kn >= K, wsrc);
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
    const size_t bytes = (size_t)(o1 - o0) * w->cols * (w->dtype == DS_F32 ? 4 : 2);
    if (n < 4) {
        decode_cols(out, x, w, n, o0, o1);
    } else if (n <= SMALL_N && bytes <= SMALL_BYTES) {
        /* a few rows (a verification block) on a cache-resident weight range: the decode
         * tiles, 2 rows at a time (3 for an odd count's last), re-read the weights from cache
         * and measured faster than the panels, whose fixed costs small K cannot amortise */
        for (int i = 0; i < n;) {
            const int R = n - i == 3 ? 3 : 2;
            decode_cols(out + (size_t)i * w->rows, x + (size_t)i * w->cols, w, R, o0, o1);
            i += R;
        }
    } else {
        prefill_cols(out, x, w, n, o0, o1);
    }
}

void kern_matmul_avx2(float *out, const float *x, const Weight *w, int n) {
    /* small: no parallel region at all (even an if(0) one costs a libgomp team allocation) */
    if ((size_t)w->rows * w->cols * (size_t)n < 65536) {
        matmul_part(out, x, w, n, 0, 1);
        return;
    }
    #pragma omp parallel
    matmul_part(out, x, w, n, omp_get_thread_num(), omp_get_num_threads());
}

/* thread t of T's share of kern_matmul_multi_avx2: its column range of each weight, then
 * (act) outs[0] = silu(outs[0]) * outs[1] on those columns (same rows count: same columns) */
static void multi_part(float *const *outs, const float *x, const Weight *const *ws, int count, int n, int act, int t, int T) {
    for (int j = 0; j < count; j++) matmul_part(outs[j], x, ws[j], n, t, T);
    if (act == KERN_ACT_SWIGLU) {
        int o0, o1, O = ws[0]->rows;
        part_range(O, t, T, &o0, &o1);
        for (int i = 0; i < n && o0 < o1; i++)
            kern_swiglu_avx2(outs[0] + (size_t)i * O + o0, outs[0] + (size_t)i * O + o0, outs[1] + (size_t)i * O + o0,
                             (size_t)(o1 - o0));
    }
}

/* count matmuls of the same x in ONE parallel region (each thread its column range of each
 * weight, so the bytes per thread stay balanced) */
void kern_matmul_multi_avx2(float *const *outs, const float *x, const Weight *const *ws, int count, int n, int act) {
    size_t work = 0;
    for (int j = 0; j < count; j++) work += (size_t)ws[j]->rows * ws[j]->cols * (size_t)n;
    if (work < 65536) {
        multi_part(outs, x, ws, count, n, act, 0, 1);
        return;
    }
    #pragma omp parallel
    multi_part(outs, x, ws, count, n, act, omp_get_thread_num(), omp_get_num_threads());
}

/* (x[0] is not NaN: kern_argmax_f32) max(v, m) returns m when v is NaN, so NaNs never win */
int32_t kern_argmax_f32_avx2(const float *x, int n) {
    __m256 m = _mm256_set1_ps(x[0]);
    int i = 0;
    for (; i + 8 <= n; i += 8) m = _mm256_max_ps(_mm256_loadu_ps(x + i), m);
    float lanes[8], mx = x[0];
    _mm256_storeu_ps(lanes, m);
    for (int j = 0; j < 8; j++) mx = lanes[j] > mx ? lanes[j] : mx;
    for (int k = i; k < n; k++) mx = x[k] > mx ? x[k] : mx;
    const __m256 mv = _mm256_set1_ps(mx);
    for (int k = 0; k + 8 <= n; k += 8) {
        int eq = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + k), mv, _CMP_EQ_OQ));
        if (eq) return k + __builtin_ctz((unsigned)eq);
    }
    for (int k = i; k < n; k++) if (x[k] == mx) return k;
    return 0; /* not reached: mx is one of the values */
}

float kern_dot_f32_avx2(const float *a, const float *b, int n) {
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= n; k += 16) {
        lo = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), lo);
        hi = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8), _mm256_loadu_ps(b + k + 8), hi);
    }
    if (k < n) {
        const __m256i ml = lane_mask(n - k), mh = lane_mask(n - k - 8);
        lo = _mm256_fmadd_ps(_mm256_maskload_ps(a + k, ml), _mm256_maskload_ps(b + k, ml), lo);
        hi = _mm256_fmadd_ps(_mm256_maskload_ps(a + k + 8, mh), _mm256_maskload_ps(b + k + 8, mh), hi);
    }
    return hsum16(lo, hi);
}

/* ---- elementwise (no FMA where the portable expression has two roundings, so the scalar
 * tails and the vector body agree and match the trainer's ops bit for bit) ---- */

/* out = w * (x * r) */
void kern_scale_mul_avx2(float *out, const float *x, float r, const Weight *w, int dim) {
    const __m256 rv = _mm256_set1_ps(r);
    int k = 0;
    for (; k + 8 <= dim; k += 8) {
        __m256 wv = w->dtype == DS_BF16 ? wload8(DS_BF16, w->host, k) : w->dtype == DS_F16 ? wload8(DS_F16, w->host, k) : wload8(DS_F32, w->host, k);
        _mm256_storeu_ps(out + k, _mm256_mul_ps(wv, _mm256_mul_ps(_mm256_loadu_ps(x + k), rv)));
    }
    for (; k < dim; k++) out[k] = kern_weight_at(w, k) * (x[k] * r);
}

void kern_add_avx2(float *x, const float *y, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) x[i] += y[i];
}

void kern_rope_apply_avx2(float *x, const float *c, const float *s, int n_heads, int head_dim) {
    const int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * head_dim;
        int j = 0;
        for (; j + 8 <= half; j += 8) {
            __m256 a = _mm256_loadu_ps(v + j), b = _mm256_loadu_ps(v + j + half);
            __m256 cv = _mm256_loadu_ps(c + j), sv = _mm256_loadu_ps(s + j);
            _mm256_storeu_ps(v + j, _mm256_sub_ps(_mm256_mul_ps(a, cv), _mm256_mul_ps(b, sv)));
            _mm256_storeu_ps(v + j + half, _mm256_add_ps(_mm256_mul_ps(b, cv), _mm256_mul_ps(a, sv)));
        }
        for (; j < half; j++) {
            float a = v[j], b = v[j + half];
            v[j] = a * c[j] - b * s[j];
            v[j + half] = b * c[j] + a * s[j];
        }
    }
}

/* ---- exp ---- */

/* e^x for 8 lanes, deterministic (no table, no libm): x = n ln2 + r, |r| <= ln2/2, e^r by
 * the degree-6 minimax polynomial of Cephes' expf (max relative error ~1.5e-7, 1-2 ulp),
 * times 2^n built in the exponent field. x is clamped to [-87.3, 88.3] (so -126 <= n <= 127):
 * callers mask lanes that must be exactly 0. */
AI __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3365447504f)), _mm256_set1_ps(88.3762626647949f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

AI __m256 silu_mul8(__m256 g, __m256 u) {
    __m256 s = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
    return _mm256_mul_ps(s, u);
}

/* out = silu(gate) * up = gate / (1 + e^-gate) * up; the tail goes through the same vector
 * arithmetic (a padded copy), so an element's value never depends on where a chunk starts */
void kern_swiglu_avx2(float *out, const float *gate, const float *up, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, silu_mul8(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
    if (i < n) {
        const __m256i m = lane_mask((int)(n - i));
        _mm256_maskstore_ps(out + i, m, silu_mul8(_mm256_maskload_ps(gate + i, m), _mm256_maskload_ps(up + i, m)));
    }
}

/* ---- attention ---- */

/* Per (query, head), keys in fixed blocks of 16 aligned to key 0:
 *   s_j = (q . k_j) (16-lane FMA over head_dim, hsum16 tree), times scale
 *   m' = max(m, max s); c = e^(m - m') (0 on the first block); p = e^(s - m') (0 past kv_len)
 *   l = l c + tree16(p); acc = acc c, then + p_j v_j for j increasing (FMA)
 *   out = acc / l
 * The blocks depend only on the key index, so a query's result depends only on its q, its
 * slot's cache and its kv_len, never on the other queries or the thread count. Two heads of
 * a query run side by side (attn_heads, P = 2) so that their serial softmax chains overlap;
 * each head's operations are exactly those it gets alone (P = 1). */
#define AB 16
#define HD_MAX 256

bool kern_attention_avx2_ok(int head_dim) { return head_dim % 16 == 0 && head_dim <= HD_MAX; }

typedef struct {
    const float *q, *kb, *vb; /* query; key 0 of its slot and kv head (keys ld floats apart) */
    float *out;
} AttnHead;

AI float hmax8(__m256 s) {
    __m128 mx = _mm_max_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    mx = _mm_max_ps(mx, _mm_movehl_ps(mx, mx));
    mx = _mm_max_ss(mx, _mm_movehdup_ps(mx));
    return _mm_cvtss_f32(mx);
}

/* scores of keys [j, j + 4) of the block (those < nb; others 0), each reduced to its 8
 * level-(j, j+8) sums */
AI void scores4(__m256 *sv, const float *q, const float *kj, size_t ld, int nb, int hd) {
    __m256 lo[4], hi[4];
    #pragma GCC unroll 4
    for (int t = 0; t < 4; t++) lo[t] = hi[t] = _mm256_setzero_ps();
    for (int d = 0; d < hd; d += 16) {
        const __m256 ql = _mm256_loadu_ps(q + d), qh = _mm256_loadu_ps(q + d + 8);
        #pragma GCC unroll 4
        for (int t = 0; t < 4; t++)
            if (t < nb) {
                const float *kp = kj + (size_t)t * ld + d;
                lo[t] = _mm256_fmadd_ps(ql, _mm256_loadu_ps(kp), lo[t]);
                hi[t] = _mm256_fmadd_ps(qh, _mm256_loadu_ps(kp + 8), hi[t]);
            }
    }
    #pragma GCC unroll 4
    for (int t = 0; t < 4; t++) sv[t] = _mm256_add_ps(lo[t], hi[t]);
}

AI void attn_heads(int P, const AttnHead *hs, size_t ld, int len, int hd, float scale) {
    float acc[2][HD_MAX] __attribute__((aligned(32)));
    float m[2], l[2];
    for (int p = 0; p < P; p++) {
        memset(acc[p], 0, sizeof(float) * hd);
        m[p] = -INFINITY;
        l[p] = 0.0f;
    }
    for (int j0 = 0; j0 < len; j0 += AB) {
        const int nb = len - j0 < AB ? len - j0 : AB;
        const __m256i valid0 = lane_mask(nb), valid1 = lane_mask(nb - 8);
        float pj[2][AB] __attribute__((aligned(32)));
        float c[2];
        #pragma GCC unroll 2
        for (int p = 0; p < P; p++) {
            const float *kj0 = hs[p].kb + (size_t)j0 * ld;
            __m256 sv[AB];
            #pragma GCC unroll 4
            for (int j = 0; j < AB; j += 4) scores4(sv + j, hs[p].q, kj0 + (size_t)j * ld, ld, nb - j, hd);
            const __m256 sc = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(-INFINITY);
            __m256 s0 = _mm256_mul_ps(hsum8x8(sv), sc), s1 = _mm256_mul_ps(hsum8x8(sv + 8), sc);
            s0 = _mm256_blendv_ps(ninf, s0, _mm256_castsi256_ps(valid0));
            s1 = _mm256_blendv_ps(ninf, s1, _mm256_castsi256_ps(valid1));
            const float mb = hmax8(_mm256_max_ps(s0, s1)), mnew = m[p] > mb ? m[p] : mb; /* max: exact in any order */
            const __m256 mv = _mm256_set1_ps(mnew);
            const __m256 p0 = _mm256_and_ps(exp8(_mm256_sub_ps(s0, mv)), _mm256_castsi256_ps(valid0));
            const __m256 p1 = _mm256_and_ps(exp8(_mm256_sub_ps(s1, mv)), _mm256_castsi256_ps(valid1));
            c[p] = m[p] != -INFINITY ? _mm256_cvtss_f32(exp8(_mm256_set1_ps(m[p] - mnew))) : 0.0f;
            l[p] = l[p] * c[p] + hsum16(p0, p1);
            m[p] = mnew;
            _mm256_store_ps(pj[p], p0);
            _mm256_store_ps(pj[p] + 8, p1);
        }
        /* 64 dims at a time in registers; per element: acc c, then + p_j v_j for j increasing */
        #pragma GCC unroll 2
        for (int p = 0; p < P; p++) {
            const __m256 cv = _mm256_set1_ps(c[p]);
            const float *vj0 = hs[p].vb + (size_t)j0 * ld;
            for (int d0 = 0; d0 < hd; d0 += 64) {
                const int nd = hd - d0 < 64 ? (hd - d0) / 8 : 8;
                __m256 a[8];
                #pragma GCC unroll 8
                for (int t = 0; t < 8; t++) a[t] = t < nd ? _mm256_mul_ps(_mm256_load_ps(acc[p] + d0 + 8 * t), cv) : _mm256_setzero_ps();
                for (int j = 0; j < nb; j++) {
                    const __m256 pv = _mm256_set1_ps(pj[p][j]);
                    const float *vj = vj0 + (size_t)j * ld + d0;
                    #pragma GCC unroll 8
                    for (int t = 0; t < 8; t++)
                        if (t < nd) a[t] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vj + 8 * t), a[t]);
                }
                #pragma GCC unroll 8
                for (int t = 0; t < 8; t++)
                    if (t < nd) _mm256_store_ps(acc[p] + d0 + 8 * t, a[t]);
            }
        }
    }
    for (int p = 0; p < P; p++) {
        const __m256 inv = _mm256_set1_ps(1.0f / l[p]);
        for (int d = 0; d < hd; d += 8) _mm256_storeu_ps(hs[p].out + d, _mm256_mul_ps(_mm256_load_ps(acc[p] + d), inv));
    }
}

/* item it: query it / pairs, heads 2 (it % pairs) and the next one (if any) */
static void attn_item(float *out, const float *q, const KvCache *kv, int layer, const int32_t *slot, const int32_t *kv_len,
                      int n_heads, int group, int hd, float scale, int it) {
    const int hpairs = (n_heads + 1) / 2, i = it / hpairs, h0 = 2 * (it % hpairs), len = kv_len[i];
    const size_t ld = (size_t)kv->kv_dim;
    DS_ASSERT(len >= 1 && len <= kv->max_ctx && slot[i] >= 0 && slot[i] < kv->n_slots);
    const size_t base = (((size_t)layer * kv->n_slots + slot[i]) * kv->max_ctx) * ld;
    AttnHead hs[2];
    const int P = h0 + 1 < n_heads ? 2 : 1;
    for (int p = 0; p < P; p++) {
        const size_t off = base + (size_t)((h0 + p) / group) * hd, qo = ((size_t)i * n_heads + h0 + p) * hd;
        hs[p] = (AttnHead){q + qo, kv->k + off, kv->v + off, out + qo};
    }
    /* common head sizes as constants: the loops over dims unroll, no per-key branches */
#define ATTN_HD(c) (P == 2 ? attn_heads(2, hs, ld, len, c, scale) : attn_heads(1, hs, ld, len, c, scale))
    switch (hd) {
    case 16: ATTN_HD(16); break;
    case 32: ATTN_HD(32); break;
    case 64: ATTN_HD(64); break;
    case 128: ATTN_HD(128); break;
    default: ATTN_HD(hd); break;
    }
#undef ATTN_HD
}

void kern_attention_avx2(float *out, const float *q, const KvCache *kv, int layer, const int32_t *slot, const int32_t *kv_len,
                         int n, int n_heads, int n_kv_heads, int head_dim) {
    DS_ASSERT(kern_attention_avx2_ok(head_dim) && n_heads % n_kv_heads == 0);
    const int group = n_heads / n_kv_heads, hd = head_dim, hpairs = (n_heads + 1) / 2;
    const float scale = 1.0f / sqrtf((float)hd);
    long work = 0;
    for (int i = 0; i < n; i++) work += kv_len[i];
    work *= (long)n_heads * hd;
    /* work items: (query, pair of heads 2e, 2e+1); small: no parallel region (as matmul) */
    if (work < 65536 || n * hpairs == 1) {
        for (int it = 0; it < n * hpairs; it++) attn_item(out, q, kv, layer, slot, kv_len, n_heads, group, hd, scale, it);
        return;
    }
    #pragma omp parallel for schedule(dynamic, 1)
    for (int it = 0; it < n * hpairs; it++) attn_item(out, q, kv, layer, slot, kv_len, n_heads, group, hd, scale, it);
}
