/* test_attention_emu.cc - the CUDA attention kernels (src/cuda/attention*.cuh: k_attention,
 * k_attention_r8, k_attention_tc) run on the CPU through tests/cuda_emu.h, so CI checks their
 * logic with no GPU: each against an attention in double (the host's float arithmetic: not the
 * GPU's bits), and the invariants the engine's exactness rests on, bit for bit: a KV head's
 * query heads per block (GQ) or one head per block (tensor cores: 1..16 / GQ tokens a block),
 * 1..16 blocks a token, the fused merge or k_attention_merge, a token alone or in a batch with
 * other sequences' tokens. On the GPU, test_cuda checks the same invariants
 * with the GPU's arithmetic. Must fail: another chunk size (other bits) and a changed key
 * (another answer). */
#include "cuda_emu.h"

#include "base.h"
#include "test.h"

#include "cuda/cuda_common.cuh"
#include "cuda/attention.cuh"
#include "cuda/attention_r8.cuh"
#include "cuda/attention_tc.cuh"

#ifdef DSPARK_SANITIZED
static const bool g_small = true; /* the sanitised run: fewer keys */
#else
static const bool g_small = false;
#endif

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* uniform in [-1, 1) */
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((g_rng >> 40) * (1.0 / (1 << 23))) - 1.0f;
}

/* a batch of tokens against per-sequence caches [layers][n_slots][max_ctx][kv_dim] */
struct Case {
    int head_dim, n_kv_heads, group, n_slots, max_ctx, layers, layer;
    std::vector<int32_t> slot, len; /* per token */
    std::vector<float> q, kc, vc;   /* q [n][n_heads][head_dim] */
    int n() const { return (int)slot.size(); }
    int n_heads() const { return n_kv_heads * group; }
    int kv_dim() const { return n_kv_heads * head_dim; }
};

static Case make_case(int head_dim, int n_kv_heads, int group, std::vector<int32_t> slot, std::vector<int32_t> len) {
    Case c{head_dim, n_kv_heads, group, 0, 0, 2, 1, slot, len, {}, {}, {}};
    for (size_t i = 0; i < slot.size(); i++) {
        c.n_slots = slot[i] + 1 > c.n_slots ? slot[i] + 1 : c.n_slots;
        c.max_ctx = len[i] > c.max_ctx ? len[i] : c.max_ctx;
    }
    c.max_ctx += 3;
    c.q.resize((size_t)c.n() * c.n_heads() * head_dim);
    for (float &x : c.q) x = frand();
    c.kc.resize((size_t)c.layers * c.n_slots * c.max_ctx * c.kv_dim());
    c.vc.resize(c.kc.size());
    for (float &x : c.kc) x = frand();
    for (float &x : c.vc) x = frand();
    return c;
}

/* softmax(q k / sqrt(head_dim)) v over a token's keys, in double */
static std::vector<float> reference(const Case &c) {
    const int hd = c.head_dim, nh = c.n_heads();
    std::vector<float> out((size_t)c.n() * nh * hd);
    std::vector<double> s;
    for (int i = 0; i < c.n(); i++)
        for (int h = 0; h < nh; h++) {
            const float *qi = &c.q[((size_t)i * nh + h) * hd];
            const size_t base = ((size_t)c.layer * c.n_slots + c.slot[i]) * c.max_ctx * c.kv_dim() + (size_t)(h / c.group) * hd;
            s.assign(c.len[i], 0.0);
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < c.len[i]; j++) {
                double d = 0;
                for (int t = 0; t < hd; t++) d += (double)qi[t] * c.kc[base + (size_t)j * c.kv_dim() + t];
                s[j] = d / sqrt((double)hd);
                mx = s[j] > mx ? s[j] : mx;
            }
            for (int j = 0; j < c.len[i]; j++) sum += s[j] = exp(s[j] - mx);
            for (int t = 0; t < hd; t++) {
                double o = 0;
                for (int j = 0; j < c.len[i]; j++) o += s[j] * c.vc[base + (size_t)j * c.kv_dim() + t];
                out[((size_t)i * nh + h) * hd + t] = (float)(o / sum);
            }
        }
    return out;
}

/* the three kernels of cu_attention */
enum Kernel { K_SCALAR, K_R8, K_TC };
static const char *const kernel_name[] = {"k_attention", "k_attention_r8", "k_attention_tc"};

/* how a launch is made (none of it may change a value but chunk and the kernel) */
struct Run {
    Kernel kernel;
    int gq;     /* query heads per block: 1 or the group (k_attention_tc: its own, att_tc_launch's) */
    int grid_z; /* blocks per (token, head block), 1..ATT_SPLITS */
    bool fused; /* the last block merges (a counter per (token, head)); else k_attention_merge */
    int chunk;  /* keys per chunk; 0: the default (att_chunk_of) */
    int tg;     /* k_attention_tc's tokens per block; 0: 16 / its query heads */
};

/* DPL: k_attention's dims a lane (head_dim / 32 rounded up), DPL8 k_attention_r8's (head_dim / 8) */
template <int DPL, int DPL8, int GQ>
static void launch_att(const Case &c, const Run &r, float *out, float *part, int *cnt) {
    const int n = c.n(), nh = c.n_heads(), hd = c.head_dim;
    const float scale = (float)(1.4426950408889634 / sqrt((double)hd));
    const dim3 grid((unsigned)(nh / GQ), (unsigned)n, (unsigned)r.grid_z);
    const size_t smem = sizeof(float) * ATT_WARPS * GQ * ((size_t)hd + 2);
    if (r.kernel == K_R8)
        emu::launch(grid, dim3(8 * ATR_STREAMS * GQ), smem, [&] {
            k_attention_r8<DPL8, GQ>(part, c.q.data(), c.kc.data(), c.vc.data(), c.slot.data(), c.len.data(), c.layer, c.n_slots, c.max_ctx,
                                     c.kv_dim(), nh, c.group, hd, scale, r.chunk, true, out, nullptr, cnt);
        });
    else
        emu::launch(grid, dim3(32 * ATT_WARPS), smem, [&] {
            k_attention<DPL, GQ, DPL % 4 == 0>(part, c.q.data(), c.kc.data(), c.vc.data(), c.slot.data(), c.len.data(), c.layer, c.n_slots,
                                               c.max_ctx, c.kv_dim(), nh, c.group, hd, scale, r.chunk, true, out, nullptr, cnt);
        });
}

/* k_attention_tc as att_tc_launch makes it: 2^lgq query heads (the largest power of 2 <= 16
 * dividing the group) times tg tokens a block */
template <int MT>
static void launch_tc(const Case &c, const Run &r, float *out, float *part, int *cnt) {
    const int n = c.n(), nh = c.n_heads(), hd = c.head_dim;
    const float scale = (float)(1.4426950408889634 / sqrt((double)hd));
    int lgq = 4;
    while (c.group % (1 << lgq)) lgq--;
    const int gq = 1 << lgq, tg = r.tg >= 1 && r.tg <= ATC_ROWS / gq ? r.tg : ATC_ROWS / gq;
    const dim3 grid((unsigned)(nh / gq), (unsigned)((n + tg - 1) / tg), (unsigned)r.grid_z);
    emu::launch(grid, dim3(32 * ATT_WARPS), atc_smem(hd), [&] {
        k_attention_tc<MT>(part, c.q.data(), c.kc.data(), c.vc.data(), c.slot.data(), c.len.data(), c.layer, c.n_slots, c.max_ctx, c.kv_dim(), n,
                           nh, c.group, lgq, tg, scale, r.chunk, true, out, nullptr, cnt);
    });
}

/* out of a whole launch of c as the backend would make it (cu_attention's instances) */
template <int DPL, int DPL8>
static std::vector<float> run_att(const Case &c, const Run &r) {
    const int n = c.n(), nh = c.n_heads();
    std::vector<float> out((size_t)n * nh * c.head_dim, NAN), part((size_t)n * nh * ATT_SPLITS * (c.head_dim + 2), NAN);
    std::vector<int> count((size_t)n * nh, 0);
    int *cnt = r.fused ? count.data() : nullptr;
    if (r.kernel == K_TC) {
        if constexpr (DPL8 <= 16) launch_tc<DPL8 / 2>(c, r, out.data(), part.data(), cnt); /* (head_dim = 16 MT) */
    } else if (r.gq == 1) launch_att<DPL, DPL8, 1>(c, r, out.data(), part.data(), cnt);
    else if (r.gq == 2) launch_att<DPL, DPL8, 2>(c, r, out.data(), part.data(), cnt);
    else if (r.gq == 4) launch_att<DPL, DPL8, 4>(c, r, out.data(), part.data(), cnt);
    else if (r.gq == 8) launch_att<DPL, DPL8, 8>(c, r, out.data(), part.data(), cnt);
    else CHECK_MSG(0, "gq %d: no instance", r.gq);
    if (!r.fused)
        emu::launch(dim3((unsigned)nh, (unsigned)n), dim3(128), 0,
                    [&] { k_attention_merge(out.data(), nullptr, part.data(), c.len.data(), nh, c.head_dim, r.chunk); });
    for (int v : count) CHECK_MSG(v == 0, "the fused merge's counters are reset for the next launch");
    return out;
}

/* token i of c alone, in a launch of its own */
static Case alone(const Case &c, int i) {
    Case a = c;
    a.slot = {c.slot[i]};
    a.len = {c.len[i]};
    a.q.assign(c.q.begin() + (size_t)i * c.n_heads() * c.head_dim, c.q.begin() + (size_t)(i + 1) * c.n_heads() * c.head_dim);
    return a;
}

static bool same_bits(const std::vector<float> &a, const float *b, size_t n) { return memcmp(a.data(), b, n * sizeof(float)) == 0; }

/* one kernel on c: against the reference, and its launches' invariants bit for bit */
template <int DPL, int DPL8>
static void check_kernel(const char *shape, const Case &c, Kernel kn, const std::vector<float> &ref) {
    char name[96], what[192];
    snprintf(name, sizeof name, "%s, %s", shape, kernel_name[kn]);
    const size_t nv = ref.size();
    const unsigned long long sw0 = emu::g.switches;
    /* the engine's 1-token launch: per head, the splits as blocks, fused merge */
    const Run base = {kn, 1, ATT_SPLITS, true, 0, 0};
    const std::vector<float> out = run_att<DPL, DPL8>(c, base);
    snprintf(what, sizeof what, "%s: against the reference", name);
    CHECK_CLOSE(what, out.data(), ref.data(), nv, 1e-5f, 1e-4f);
    /* other blocks: grouped heads (tensor cores: tokens a block), splits in turn, the merge apart */
    const Run runs[] = {{kn, c.group, ATT_SPLITS, true, 0, 1}, {kn, c.group, 1, true, 0, 2}, {kn, 1, 3, false, 0, 3},
                        {kn, c.group, 2, false, 0, 0}};
    for (const Run &r : runs) {
        const std::vector<float> o = run_att<DPL, DPL8>(c, r);
        CHECK_MSG(same_bits(out, o.data(), nv), "%s: gq %d, tg %d, %d blocks a token, %s merge: other bits than the first launch", name,
                  r.gq, r.tg, r.grid_z, r.fused ? "fused" : "separate");
    }
    for (int i = 0; i < c.n(); i++) { /* a token alone: the same bits as in the batch */
        if (g_small && i != 1 && i != c.n() - 1) continue; /* (sanitised: two of them) */
        const Case a = alone(c, i);
        const size_t per = (size_t)c.n_heads() * c.head_dim;
        for (int gq : {1, c.group}) {
            const std::vector<float> o = run_att<DPL, DPL8>(a, {kn, gq, ATT_SPLITS, true, 0, 0});
            CHECK_MSG(same_bits(o, out.data() + i * per, per), "%s: token %d alone (gq %d): other bits than in the batch", name, i, gq);
            if (kn == K_TC) break; /* (one block shape) */
        }
    }
    /* must fail: another chunk size sums the keys in another order (close, not the same bits) */
    const std::vector<float> o32 = run_att<DPL, DPL8>(c, {kn, c.group, ATT_SPLITS, true, 32, 0});
    snprintf(what, sizeof what, "%s: 32-key chunks against the reference", name);
    CHECK_CLOSE(what, o32.data(), ref.data(), nv, 1e-5f, 1e-4f);
    CHECK_MSG(!same_bits(out, o32.data(), nv), "%s: 32-key chunks gave the default's bits (the bit check would miss a change)", name);
    /* must fail: a changed key is another answer */
    Case bad = c;
    bad.kc[((size_t)c.layer * c.n_slots + c.slot[0]) * c.max_ctx * c.kv_dim()] += 4.0f;
    const std::vector<float> ob = run_att<DPL, DPL8>(bad, base);
    g_expect_failure = 1;
    CHECK_MSG(!check_close("changed key", ob.data(), ref.data(), nv, 1e-5f, 1e-4f, __FILE__, __LINE__),
              "%s: a changed key passed the reference check", name);
    g_expect_failure = 0;
    fprintf(stderr, "  %s: %llu fiber switches\n", name, emu::g.switches - sw0);
}

/* the kernels that apply to c: k_attention always, k_attention_r8 for head_dim 32, 64, 128 and
 * 256, k_attention_tc for head_dim % 16 == 0 up to 128 */
template <int DPL, int DPL8>
static void check_shape(const char *shape, const Case &c) {
    const std::vector<float> ref = reference(c);
    check_kernel<DPL, DPL8>(shape, c, K_SCALAR, ref);
    if (c.head_dim % 32 == 0) check_kernel<DPL, DPL8>(shape, c, K_R8, ref);
    if (c.head_dim <= 128) check_kernel<DPL, DPL8>(shape, c, K_TC, ref);
}

/* Qwen3-4B's heads (head_dim 128, 4 query heads a KV head): a verify run of 3 tokens of one
 * sequence, a sequence of 3 chunks, one of 1 key, one ending inside its first chunk */
static void test_qwen3_4b_heads(void) {
    const bool big = !g_small;
    const Case c = make_case(128, 2, 4, {0, 0, 0, 1, 2, 3}, {37, 38, 39, big ? 300 : 140, 1, 129});
    check_shape<4, 16>("head_dim 128, group 4", c);
}

/* head_dim 64 (2 dims a lane, no float4), group 2; past 1024 keys the chunk is 256 */
static void test_head64_group2(void) {
    const bool big = !g_small;
    const Case c = make_case(64, 2, 2, {1, 0, 0}, {big ? 1100 : 260, 17, 18});
    check_shape<2, 8>("head_dim 64, group 2", c);
}

/* head_dim 32 (a dim a lane), group 8: the widest GQ block */
static void test_head32_group8(void) {
    const Case c = make_case(32, 1, 8, {0, 1}, {70, 9});
    check_shape<1, 4>("head_dim 32, group 8", c);
}

/* head_dim 256 (k_attention_r8: a key a stream at once), group 2 */
static void test_head256_group2(void) {
    const Case c = make_case(256, 1, 2, {0, 0, 1}, {45, 46, 130});
    check_shape<8, 32>("head_dim 256, group 2", c);
}

int main(void) {
    RUN(test_qwen3_4b_heads);
    RUN(test_head64_group2);
    RUN(test_head32_group8);
    RUN(test_head256_group2);
    return test_summary();
}
