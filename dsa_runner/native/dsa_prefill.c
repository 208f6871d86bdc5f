/* DSA's sparse prefill on the CPU: index scores, top-k and attention over the selected keys.
 *
 * For each query t (at key position pos = S - T + t, causal: it sees keys 0..pos):
 *   I(t, s)  = sum_j w(t, j) * ReLU(q_I(t, j) . k_I(s))       s <= pos   (DeepSeek-V3.2, eq. 1)
 *   sel(t)   = the top_k keys by I(t, .); ties at the boundary go to the most recent key; every key when
 *              pos + 1 <= top_k                                            (kernels.select_top_k, stable)
 *   out(t,h) = softmax(q(t,h) K[sel]^T * scaling) V[sel]                   (eq. 2; one selection for all heads)
 *
 * Why C: the torch path scores every causal pair with fp32 matmuls, sorts with topk, then gathers K/V rows
 * per query and runs small batched matmuls; at 7.5K tokens it is several times slower than dense SDPA.
 * Here the work unit is a block of 16 consecutive queries: their index scores (AMX tiles, or AVX512-BF16
 * per query), an exact radix select per query, then attention. With AMX the block's attention runs over
 * the union of its queries' selections as tiles (a key a query did not select gets probability 0), since
 * neighbouring queries select many of the same keys; without it (or for head dims other than 64) each
 * query reads its selected rows alone. Inputs are bfloat16, so the products are exact in float32 and only
 * the order of the sums differs from the torch path. Probabilities are rounded to bfloat16 for P.V, as
 * the torch gather path does.
 *
 * Blocks are handed to the threads last first from an atomic counter (a block's cost grows with pos).
 * Without AVX512-BF16 (dsa_prefill_available() == 0) the runner keeps the torch path.
 * Built by dsa_runner/native_prefill.py (-O3 -march=native -pthread).
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <stdatomic.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

typedef uint16_t bf16;

#if defined(__AVX512F__) && defined(__AVX512BF16__) && defined(__AVX512BW__)
#define HAVE_KERNEL 1
#else
#define HAVE_KERNEL 0
#endif

#define MAX_INDEX_HEADS 64
#define MAX_INDEX_DIM 256
#define MAX_GROUP 16     /* query heads per KV head */
#define MAX_HEAD_DIM 256
#define BLOCK 32 /* queries per job: two AMX tiles of rows share the gathered keys */

int dsa_prefill_available(void) { return HAVE_KERNEL; }

typedef struct {
    /* index queries (T, H_I, d_I) bf16, w (T, H_I) float32 contiguous, index keys (S, d_I) bf16 */
    const bf16 *q_idx; int64_t q_idx_t, q_idx_h;
    const float *w;
    const bf16 *k_idx; int64_t k_idx_s;
    int index_heads, index_dim;
    /* attention: query (H, T, d), key/value (H_kv, S, d), out (T, H, d), all bf16, last dim contiguous */
    const bf16 *q; int64_t q_h, q_t;
    const bf16 *k; int64_t k_h, k_s;
    const bf16 *v; int64_t v_h, v_s;
    bf16 *out;
    int heads, kv_heads, head_dim;
    float scaling;
    int T, S, top_k;
    int32_t *selected; /* optional (T, top_k): the selection, -1 past a row's count (for tests) */
} Job;

#if HAVE_KERNEL

/* ------------------------------------------------------------------------------------------------ */
/* small vector helpers */

static inline __m512 exp512(__m512 x) { /* e^x, x <= 0 here; about 1 ulp over the range used */
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
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

/* sixteen vectors -> one vector of their sixteen horizontal sums (lane i: sum of v[i]) */
static inline __m512 hsum16(__m512 v[16]) {
    __m512 a[8], b[4], c[2];
    for (int i = 0; i < 8; i++) { /* lanes now hold pairs of partial sums */
        __m512 x = v[2 * i], y = v[2 * i + 1];
        a[i] = _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
    }
    for (int i = 0; i < 4; i++) {
        __m512d x = _mm512_castps_pd(a[2 * i]), y = _mm512_castps_pd(a[2 * i + 1]);
        b[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    for (int i = 0; i < 2; i++) { /* 128-bit lanes: 0,2 of one and 0,2 of the other, then 1,3 */
        __m512 x = b[2 * i], y = b[2 * i + 1];
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x88), _mm512_shuffle_f32x4(x, y, 0xDD));
    }
    __m512 d = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xDD));
    return d; /* lane 4 * lane128 + m holds the sum of v[4 * lane128 + m]: already in order */
}

static inline uint32_t ordered_bits(float f) { /* monotone in f; -0.0 and +0.0 equal */
    f += 0.0f;
    uint32_t u;
    memcpy(&u, &f, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* ------------------------------------------------------------------------------------------------ */
/* index keys, packed once per call: block of 16 keys, pair p -> 16 x uint32 (two bf16 dims of each key) */

static uint32_t *pack_index_keys(const Job *J, int n_keys) {
    int pairs = J->index_dim / 2, blocks = (n_keys + 15) / 16;
    uint32_t *packed = aligned_alloc(64, (size_t)blocks * pairs * 16 * 4 + 64);
    if (!packed) return NULL;
    for (int b = 0; b < blocks; b++)
        for (int i = 0; i < 16; i++) {
            int s = b * 16 + i;
            const uint32_t *row = (const uint32_t *)(J->k_idx + (int64_t)s * J->k_idx_s);
            for (int p = 0; p < pairs; p++)
                packed[((size_t)b * pairs + p) * 16 + i] = s < n_keys ? row[p] : 0u;
        }
    return packed;
}

/* I(t, s) for s in [0, n): scores[s] */
static void index_scores_row(const Job *J, const uint32_t *packed, int t, int n, float *scores) {
    const int H = J->index_heads, pairs = J->index_dim / 2;
    const uint32_t *q = (const uint32_t *)(J->q_idx + (int64_t)t * J->q_idx_t);
    const int64_t qh = J->q_idx_h / 2;
    const float *w = J->w + (int64_t)t * H;
    const int blocks = (n + 15) / 16;
    int b = 0;
    for (; b + 4 <= blocks; b += 4) { /* four key blocks at a time: four independent chains per head */
        __m512 total[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        const uint32_t *kb = packed + (size_t)b * pairs * 16;
        for (int j = 0; j < H; j++) {
            __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            const uint32_t *qj = q + j * qh;
            for (int p = 0; p < pairs; p++) {
                __m512bh qp = (__m512bh)_mm512_set1_epi32((int)qj[p]);
                for (int u = 0; u < 4; u++)
                    acc[u] = _mm512_dpbf16_ps(acc[u], (__m512bh)_mm512_load_si512(kb + ((size_t)u * pairs + p) * 16), qp);
            }
            __m512 wj = _mm512_set1_ps(w[j]);
            for (int u = 0; u < 4; u++)
                total[u] = _mm512_fmadd_ps(wj, _mm512_max_ps(acc[u], _mm512_setzero_ps()), total[u]);
        }
        for (int u = 0; u < 4; u++) {
            int s0 = (b + u) * 16;
            if (s0 + 16 <= n) _mm512_storeu_ps(scores + s0, total[u]);
            else _mm512_mask_storeu_ps(scores + s0, (__mmask16)((1u << (n - s0)) - 1), total[u]);
        }
    }
    for (; b < blocks; b++) {
        __m512 total = _mm512_setzero_ps();
        const uint32_t *kb = packed + (size_t)b * pairs * 16;
        for (int j = 0; j < H; j++) {
            __m512 acc = _mm512_setzero_ps();
            const uint32_t *qj = q + j * qh;
            for (int p = 0; p < pairs; p++)
                acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_load_si512(kb + (size_t)p * 16),
                                       (__m512bh)_mm512_set1_epi32((int)qj[p]));
            total = _mm512_fmadd_ps(_mm512_set1_ps(w[j]), _mm512_max_ps(acc, _mm512_setzero_ps()), total);
        }
        int s0 = b * 16;
        if (s0 + 16 <= n) _mm512_storeu_ps(scores + s0, total);
        else _mm512_mask_storeu_ps(scores + s0, (__mmask16)((1u << (n - s0)) - 1), total);
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* exact top-k by radix select on the ordered float bits (11 + 11 + 10 bits), ties to the latest keys */

static int top_k_row(const float *scores, int n, int k, uint32_t *bits, uint32_t *cand, int32_t *out) {
    if (n <= k) {
        for (int s = 0; s < n; s++) out[s] = s;
        return n;
    }
    static const int shift[3] = {21, 10, 0};
    static const uint32_t width[3] = {2048, 2048, 1024};
    uint32_t hist[2048];
    memset(hist, 0, sizeof hist);
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    for (int s = 0; s < n; s += 16) { /* ordered bits (-0.0 as +0.0), then the first level's histogram */
        __mmask16 live = n - s >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - s)) - 1);
        __m512i u = _mm512_castps_si512(_mm512_add_ps(_mm512_maskz_loadu_ps(live, scores + s), _mm512_setzero_ps()));
        u = _mm512_xor_si512(u, _mm512_or_si512(_mm512_srai_epi32(u, 31), sign));
        _mm512_mask_storeu_epi32(bits + s, live, u);
    }
    for (int s = 0; s < n; s++) hist[bits[s] >> 21]++;
    uint32_t prefix = 0, prefix_mask = 0; /* the bits of the k-th largest fixed so far */
    int need = k;                          /* how many to take among keys matching prefix */
    const uint32_t *src = bits;
    int m = n;
    for (int level = 0; level < 3; level++) {
        const int sh = shift[level];
        const uint32_t wmask = width[level] - 1;
        if (level > 0) {
            memset(hist, 0, width[level] * 4);
            for (int i = 0; i < m; i++) hist[(src[i] >> sh) & wmask]++;
        }
        int bin = (int)width[level] - 1;
        uint32_t above = 0;
        while (above + hist[bin] < (uint32_t)need) above += hist[bin--];
        need -= (int)above;
        prefix |= (uint32_t)bin << sh;
        prefix_mask |= wmask << sh;
        if (level < 2) { /* keep only the keys in the threshold's bin */
            const __m512i pm = _mm512_set1_epi32((int)prefix_mask), pv = _mm512_set1_epi32((int)prefix);
            int c = 0;
            for (int i = 0; i < m; i += 16) {
                __mmask16 live = m - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (m - i)) - 1);
                __m512i v = _mm512_maskz_loadu_epi32(live, src + i);
                __mmask16 keep = _mm512_mask_cmpeq_epi32_mask(live, _mm512_and_si512(v, pm), pv);
                _mm512_mask_compressstoreu_epi32(cand + c, keep, v);
                c += __builtin_popcount(keep);
            }
            src = cand;
            m = c;
        }
    }
    /* prefix: the k-th largest value; need: how many keys equal to it are taken (the latest ones) */
    const __m512i pv = _mm512_set1_epi32((int)prefix);
    __m512i idx = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    int count = 0, ties = 0;
    uint32_t *tied = cand; /* free again */
    for (int s = 0; s < n; s += 16) {
        __mmask16 live = n - s >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - s)) - 1);
        __m512i v = _mm512_maskz_loadu_epi32(live, bits + s);
        __mmask16 gt = _mm512_mask_cmpgt_epu32_mask(live, v, pv), eq = _mm512_mask_cmpeq_epi32_mask(live, v, pv);
        _mm512_mask_compressstoreu_epi32(out + count, gt, idx);
        _mm512_mask_compressstoreu_epi32(tied + ties, eq, idx);
        count += __builtin_popcount(gt);
        ties += __builtin_popcount(eq);
        idx = _mm512_add_epi32(idx, _mm512_set1_epi32(16));
    }
    for (int i = ties - need; i < ties; i++) out[count++] = (int32_t)tied[i];
    return count;
}

/* ------------------------------------------------------------------------------------------------ */
/* attention of one query (all heads) over the selected keys */

typedef struct {
    float *scores;   /* (MAX_GROUP, cap) */
    bf16 *probs;     /* (MAX_GROUP, cap + 2) */
    int cap;
} AttnScratch;

static inline __attribute__((always_inline)) void attend_group(
        const Job *J, int t, int g, const int32_t *sel, int count, AttnScratch *W, const int G, const int D) {
    const int chunks = D / 32;
    const bf16 *K = J->k + (int64_t)g * J->k_h;
    const bf16 *V = J->v + (int64_t)g * J->v_h;
    __m512bh qv[MAX_GROUP][MAX_HEAD_DIM / 32];
    for (int h = 0; h < G; h++)
        for (int c = 0; c < chunks; c++)
            qv[h][c] = (__m512bh)_mm512_loadu_si512(J->q + (int64_t)(g * G + h) * J->q_h + (int64_t)t * J->q_t + 32 * c);
    const int cap = W->cap;
    /* scores = q . k * scaling, sixteen keys at a time */
    const __m512 scale = _mm512_set1_ps(J->scaling);
    for (int i0 = 0; i0 < count; i0 += 16) {
        int m = count - i0 < 16 ? count - i0 : 16;
        for (int h = 0; h < G; h++) {
            __m512 acc[16];
            for (int i = 0; i < 16; i++) {
                acc[i] = _mm512_setzero_ps();
                if (i < m) {
                    const bf16 *kr = K + (int64_t)sel[i0 + i] * J->k_s;
                    for (int c = 0; c < chunks; c++)
                        acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)_mm512_loadu_si512(kr + 32 * c), qv[h][c]);
                }
            }
            _mm512_storeu_ps(W->scores + h * cap + i0, _mm512_mul_ps(hsum16(acc), scale));
        }
    }
    /* softmax numerators, rounded to bfloat16 for P.V (an odd count gets a zero partner) */
    float denom[MAX_GROUP];
    for (int h = 0; h < G; h++) {
        float *s = W->scores + h * cap;
        bf16 *p = W->probs + h * (cap + 2);
        __m512 mx = _mm512_set1_ps(-INFINITY);
        int i = 0;
        for (; i + 16 <= count; i += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + i));
        if (i < count) mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY),
                                                                    (__mmask16)((1u << (count - i)) - 1), s + i));
        __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
        __m512 sum = _mm512_setzero_ps();
        for (i = 0; i < count; i += 16) {
            __mmask16 live = count - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (count - i)) - 1);
            __m512 e = _mm512_maskz_mov_ps(live, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, s + i), m)));
            sum = _mm512_add_ps(sum, e);
            _mm256_storeu_si256((__m256i *)(p + i), (__m256i)_mm512_cvtneps_pbh(e));
        }
        denom[h] = _mm512_reduce_add_ps(sum);
        p[count] = 0;
        p[count + 1] = 0;
    }
    /* out = P V: two keys per vdpbf16ps, their V rows interleaved by unpack (dims come out permuted) */
    __m512 lo[MAX_GROUP][MAX_HEAD_DIM / 32], hi[MAX_GROUP][MAX_HEAD_DIM / 32];
    for (int h = 0; h < G; h++)
        for (int c = 0; c < chunks; c++) lo[h][c] = hi[h][c] = _mm512_setzero_ps();
    for (int i = 0; i < count; i += 2) {
        const bf16 *va = V + (int64_t)sel[i] * J->v_s;
        const bf16 *vb = V + (int64_t)sel[i + 1 < count ? i + 1 : i] * J->v_s;
        for (int c = 0; c < chunks; c++) {
            __m512i a = _mm512_loadu_si512(va + 32 * c), b = _mm512_loadu_si512(vb + 32 * c);
            __m512bh l = (__m512bh)_mm512_unpacklo_epi16(a, b), u = (__m512bh)_mm512_unpackhi_epi16(a, b);
            for (int h = 0; h < G; h++) {
                uint32_t pair;
                memcpy(&pair, W->probs + h * (cap + 2) + i, 4);
                __m512bh pp = (__m512bh)_mm512_set1_epi32((int)pair);
                lo[h][c] = _mm512_dpbf16_ps(lo[h][c], l, pp);
                hi[h][c] = _mm512_dpbf16_ps(hi[h][c], u, pp);
            }
        }
    }
    for (int h = 0; h < G; h++) {
        bf16 *o = J->out + ((int64_t)t * J->heads + g * G + h) * D;
        __m512 inv = _mm512_set1_ps(1.0f / denom[h]);
        /* lane 4L+m of lo: dim 8L+m of the chunk; of hi: dim 8L+4+m (L: the 128-bit lane) */
        for (int c = 0; c < chunks; c++) {
            __m512 x = _mm512_mul_ps(lo[h][c], inv), y = _mm512_mul_ps(hi[h][c], inv);
            __m512 first = _mm512_permutex2var_ps(x, _mm512_set_epi32(23, 22, 21, 20, 7, 6, 5, 4, 19, 18, 17, 16, 3, 2, 1, 0), y);
            __m512 second = _mm512_permutex2var_ps(x, _mm512_set_epi32(31, 30, 29, 28, 15, 14, 13, 12, 27, 26, 25, 24, 11, 10, 9, 8), y);
            _mm256_storeu_si256((__m256i *)(o + 32 * c), (__m256i)_mm512_cvtneps_pbh(first));
            _mm256_storeu_si256((__m256i *)(o + 32 * c + 16), (__m256i)_mm512_cvtneps_pbh(second));
        }
    }
}

static void attend_row(const Job *J, int t, const int32_t *sel, int count, AttnScratch *W) {
    const int G = J->heads / J->kv_heads;
    for (int g = 0; g < J->kv_heads; g++) {
        if (G == 3 && J->head_dim == 64) attend_group(J, t, g, sel, count, W, 3, 64); /* SmolLM2-135M */
        else if (G == 1 && J->head_dim == 64) attend_group(J, t, g, sel, count, W, 1, 64);
        else if (G == 4 && J->head_dim == 64) attend_group(J, t, g, sel, count, W, 4, 64);
        else if (G == 2 && J->head_dim == 128) attend_group(J, t, g, sel, count, W, 2, 128);
        else attend_group(J, t, g, sel, count, W, G, J->head_dim);
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* threads */

/* ------------------------------------------------------------------------------------------------ */
/* AMX: attention of a block of 16 consecutive queries over the union of their selections.
 *
 * Neighbouring queries select many of the same keys (with the shipped indexers, 16 queries at 7.5K select
 * some 3-4K distinct keys among them, top-k 2048 each), so the block's keys are gathered once and the
 * products run as 16 x 16 tiles: S = Q K_U^T, then each query's softmax over its own selected keys only
 * (a bit per query and key), then O = P V_U. Exact like the per-query path: a key a query did not select
 * gets probability 0. Head dim 64 (SmolLM2's) only; other shapes use the per-query path. */

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#include <sys/syscall.h>
#include <unistd.h>
#define HAVE_AMX 1

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed)) TileConfig;

static int amx_permitted(void) { /* Linux asks each process to request the AMX state once */
    static atomic_int state = 0;    /* 0 unknown, 1 yes, -1 no */
    int s = atomic_load(&state);
    if (s == 0) {
        s = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0 ? 1 : -1;
        atomic_store(&state, s);
    }
    return s == 1;
}

static int amx_usable(const Job *J) {
    const char *env = getenv("DSA_NATIVE_PREFILL_AMX");
    if (env && env[0] == '0') return 0;
    return J->head_dim == 64 && amx_permitted();
}

static void amx_configure(void) { /* every tile 16 rows x 64 bytes */
    TileConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) { cfg.colsb[i] = 64; cfg.rows[i] = 16; }
    _tile_loadconfig(&cfg);
}
#else
#define HAVE_AMX 0
static int amx_usable(const Job *J) { (void)J; return 0; }
static void amx_configure(void) {}
#define _tile_release() ((void)0)
#endif

typedef struct {
    uint32_t *mark, *mark_u; /* per key: bit qi when query qi of the block selected it; the same per union slot */
    __mmask16 *qmask;        /* per query of the block and 16 union slots: the ones it selected */
    int32_t *keys;           /* the union, ascending */
    uint32_t *kt;            /* K_U^T as tiles: per 16 keys and 32 dims, 16 dim pairs x 16 keys */
    uint32_t *vv;            /* V_U as key pairs: (V[2i][d], V[2i+1][d]) per pair i and dim d */
    float *s;                /* scores, 16 x union */
    bf16 *p;                 /* probabilities, 16 x union */
    bf16 *q;                 /* the block's queries of one head, 16 x 64 */
    float *o;                /* 16 x 64 */
    bf16 *zero;              /* a row of zeros standing in for the padding keys */
} BlockScratch;

static int block_scratch_init(BlockScratch *B, int S) {
    size_t n = (size_t)S + 64;
    B->mark = calloc(n, 4);
    B->mark_u = aligned_alloc(64, n * 4 + 64);
    B->qmask = malloc(BLOCK * (n / 16 + 4) * sizeof(__mmask16));
    B->keys = malloc(n * 4);
    B->kt = aligned_alloc(64, n * 32 * 4);
    B->vv = aligned_alloc(64, n * 32 * 4);
    B->s = aligned_alloc(64, 16 * n * 4);
    B->p = aligned_alloc(64, 16 * n * 2 + 64);
    B->q = aligned_alloc(64, 16 * 64 * 2);
    B->o = aligned_alloc(64, 16 * 64 * 4);
    B->zero = aligned_alloc(64, 64 * 2 + 64);
    if (B->zero) memset(B->zero, 0, 64 * 2 + 64);
    return B->mark && B->mark_u && B->qmask && B->keys && B->kt && B->vv && B->s && B->p && B->q && B->o && B->zero;
}

static void block_scratch_free(BlockScratch *B) {
    free(B->mark); free(B->mark_u); free(B->qmask); free(B->keys); free(B->kt); free(B->vv); free(B->s); free(B->p);
    free(B->q); free(B->o); free(B->zero);
}

#if HAVE_AMX
/* rows[i][0..15] (uint32) -> dst[j * 16 + i] */
static inline void transpose16(const uint32_t *const rows[16], uint32_t *dst) {
    __m512i r[16], t[16], u[4][4];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_si512(rows[i]);
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int R = 0; R < 4; R++) { /* u[R][m], 128-bit lane L: column 4L+m of rows 4R..4R+3 */
        u[R][0] = _mm512_unpacklo_epi64(t[4 * R], t[4 * R + 2]);
        u[R][1] = _mm512_unpackhi_epi64(t[4 * R], t[4 * R + 2]);
        u[R][2] = _mm512_unpacklo_epi64(t[4 * R + 1], t[4 * R + 3]);
        u[R][3] = _mm512_unpackhi_epi64(t[4 * R + 1], t[4 * R + 3]);
    }
    for (int m = 0; m < 4; m++) {
        __m512i a = _mm512_shuffle_i32x4(u[0][m], u[1][m], 0x44), b = _mm512_shuffle_i32x4(u[0][m], u[1][m], 0xEE);
        __m512i c = _mm512_shuffle_i32x4(u[2][m], u[3][m], 0x44), d = _mm512_shuffle_i32x4(u[2][m], u[3][m], 0xEE);
        _mm512_storeu_si512(dst + 16 * m, _mm512_shuffle_i32x4(a, c, 0x88));
        _mm512_storeu_si512(dst + 16 * (4 + m), _mm512_shuffle_i32x4(a, c, 0xDD));
        _mm512_storeu_si512(dst + 16 * (8 + m), _mm512_shuffle_i32x4(b, d, 0x88));
        _mm512_storeu_si512(dst + 16 * (12 + m), _mm512_shuffle_i32x4(b, d, 0xDD));
    }
}

static void attend_block_amx(const Job *J, int t0, int nb, const int32_t *sel, int cap, const int *counts,
                             BlockScratch *B) {
    const int D = 64, G = J->heads / J->kv_heads;
    const int n_max = J->S - J->T + t0 + nb;
    for (int qi = 0; qi < nb; qi++)
        for (int i = 0; i < counts[qi]; i++) B->mark[sel[(size_t)qi * cap + i]] |= 1u << qi;
    int U = 0;
    for (int s = 0; s < n_max; s++)
        if (B->mark[s]) {
            B->keys[U] = s;
            B->mark_u[U++] = B->mark[s];
            B->mark[s] = 0;
        }
    const int Up = (U + 31) & ~31;
    for (int u = U; u < Up; u++) { B->keys[u] = -1; B->mark_u[u] = 0; }
    const int64_t ps = Up; /* row stride of s and p */
    for (int qi = 0; qi < nb; qi++) { /* each query's selection as masks of 16 union slots, for every head */
        const __m512i bit = _mm512_set1_epi32((int)(1u << qi));
        for (int u = 0; u < Up; u += 16)
            B->qmask[(size_t)qi * (Up / 16) + u / 16] = _mm512_test_epi32_mask(_mm512_load_si512(B->mark_u + u), bit);
    }
    const __m512i pair_lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                             39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i pair_hi = _mm512_add_epi16(pair_lo, _mm512_set1_epi16(16));
    const __m512 scale = _mm512_set1_ps(J->scaling);
    for (int g = 0; g < J->kv_heads; g++) {
        const bf16 *K = J->k + (int64_t)g * J->k_h, *V = J->v + (int64_t)g * J->v_h;
        for (int b = 0; b < Up / 16; b++)
            for (int c = 0; c < 2; c++) {
                const uint32_t *rows[16];
                for (int i = 0; i < 16; i++) {
                    int key = B->keys[b * 16 + i];
                    rows[i] = (const uint32_t *)(key >= 0 ? K + (int64_t)key * J->k_s + 32 * c : B->zero);
                }
                transpose16(rows, B->kt + (size_t)(b * 2 + c) * 256);
            }
        for (int i = 0; i < Up / 2; i++) {
            int ka = B->keys[2 * i], kb = B->keys[2 * i + 1];
            const bf16 *va = ka >= 0 ? V + (int64_t)ka * J->v_s : B->zero, *vb = kb >= 0 ? V + (int64_t)kb * J->v_s : B->zero;
            for (int c = 0; c < 2; c++) {
                __m512i a = _mm512_loadu_si512(va + 32 * c), bb = _mm512_loadu_si512(vb + 32 * c);
                _mm512_store_si512(B->vv + (size_t)i * D + 32 * c, _mm512_permutex2var_epi16(a, pair_lo, bb));
                _mm512_store_si512(B->vv + (size_t)i * D + 32 * c + 16, _mm512_permutex2var_epi16(a, pair_hi, bb));
            }
        }
        for (int h = g * G; h < (g + 1) * G; h++)
        for (int r0 = 0; r0 < nb; r0 += 16) { /* 16 queries (one tile of rows) at a time */
            const int nh = nb - r0 < 16 ? nb - r0 : 16;
            for (int qi = 0; qi < 16; qi++) {
                if (qi < nh) memcpy(B->q + qi * D, J->q + (int64_t)h * J->q_h + (int64_t)(t0 + r0 + qi) * J->q_t, D * 2);
                else memset(B->q + qi * D, 0, D * 2);
            }
            for (int qi = nh; qi < 16; qi++) memset(B->p + qi * ps, 0, (size_t)Up * 2);
            for (int b = 0; b < Up / 16; b++) { /* S = Q K_U^T */
                _tile_zero(2);
                _tile_loadd(0, B->q, D * 2);
                _tile_loadd(1, B->kt + (size_t)(b * 2) * 256, 64);
                _tile_dpbf16ps(2, 0, 1);
                _tile_loadd(0, B->q + 32, D * 2);
                _tile_loadd(1, B->kt + (size_t)(b * 2 + 1) * 256, 64);
                _tile_dpbf16ps(2, 0, 1);
                _tile_stored(2, B->s + 16 * b, ps * 4);
            }
            float denom[16];
            for (int qi = 0; qi < nh; qi++) { /* softmax over the keys this query selected */
                const float *s = B->s + qi * ps;
                const __mmask16 *sel16 = B->qmask + (size_t)(r0 + qi) * (Up / 16);
                bf16 *p = B->p + qi * ps;
                __m512 mx = _mm512_set1_ps(-INFINITY);
                for (int u = 0; u < Up; u += 16) mx = _mm512_mask_max_ps(mx, sel16[u / 16], mx, _mm512_load_ps(s + u));
                __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(mx) * J->scaling); /* scaling > 0 */
                __m512 sum = _mm512_setzero_ps();
                for (int u = 0; u < Up; u += 16) {
                    __mmask16 m = sel16[u / 16];
                    if (!m) {
                        _mm256_store_si256((__m256i *)(p + u), _mm256_setzero_si256());
                        continue;
                    }
                    __m512 e = _mm512_maskz_mov_ps(m, exp512(_mm512_fmsub_ps(_mm512_load_ps(s + u), scale, top)));
                    sum = _mm512_add_ps(sum, e);
                    _mm256_store_si256((__m256i *)(p + u), (__m256i)_mm512_cvtneps_pbh(e));
                }
                denom[qi] = _mm512_reduce_add_ps(sum);
            }
            _tile_zero(4); _tile_zero(5); _tile_zero(6); _tile_zero(7);
            for (int i0 = 0; i0 < Up / 2; i0 += 16) { /* O = P V_U, 32 keys at a time */
                _tile_loadd(0, B->p + 2 * i0, ps * 2);
                _tile_loadd(1, B->vv + (size_t)i0 * D + 0, D * 4);
                _tile_dpbf16ps(4, 0, 1);
                _tile_loadd(1, B->vv + (size_t)i0 * D + 16, D * 4);
                _tile_dpbf16ps(5, 0, 1);
                _tile_loadd(1, B->vv + (size_t)i0 * D + 32, D * 4);
                _tile_dpbf16ps(6, 0, 1);
                _tile_loadd(1, B->vv + (size_t)i0 * D + 48, D * 4);
                _tile_dpbf16ps(7, 0, 1);
            }
            _tile_stored(4, B->o + 0, D * 4);
            _tile_stored(5, B->o + 16, D * 4);
            _tile_stored(6, B->o + 32, D * 4);
            _tile_stored(7, B->o + 48, D * 4);
            for (int qi = 0; qi < nh; qi++) {
                bf16 *o = J->out + ((int64_t)(t0 + r0 + qi) * J->heads + h) * D;
                __m512 inv = _mm512_set1_ps(1.0f / denom[qi]);
                for (int c = 0; c < D; c += 16)
                    _mm256_storeu_si256((__m256i *)(o + c),
                                        (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_load_ps(B->o + qi * D + c), inv)));
            }
        }
    }
}
#else
static void attend_block_amx(const Job *J, int t0, int nb, const int32_t *sel, int cap, const int *counts,
                             BlockScratch *B) {
    (void)J; (void)t0; (void)nb; (void)sel; (void)cap; (void)counts; (void)B;
}
#endif


#if HAVE_AMX
/* index scores of a block of 16 queries (4 index heads, 32 or 64 dims) over keys [0, n): AMX tiles
 * C_j = Q_I(j) K_I^T per head j, then sum_j w(t, j) ReLU(C_j). out row qi at out + qi * ld. */
static void index_scores_block_amx(const Job *J, const uint32_t *packed, int t0, int nb, int n, float *out,
                                   int64_t ld, bf16 *qbuf, float *cbuf) {
    const int H = 4, dI = J->index_dim, pairs = dI / 2, chunks = dI / 32;
    for (int j = 0; j < H; j++)
        for (int qi = 0; qi < 16; qi++) {
            bf16 *dst = qbuf + ((size_t)j * 16 + qi) * dI;
            if (qi < nb) memcpy(dst, J->q_idx + (int64_t)(t0 + qi) * J->q_idx_t + (int64_t)j * J->q_idx_h, dI * 2);
            else memset(dst, 0, dI * 2);
        }
    const int blocks = (n + 15) / 16;
    for (int b = 0; b < blocks; b++) {
        _tile_zero(4); _tile_zero(5); _tile_zero(6); _tile_zero(7);
        for (int c = 0; c < chunks; c++) {
            _tile_loadd(1, packed + ((size_t)b * pairs + 16 * c) * 16, 64);
            _tile_loadd(0, qbuf + (0 * 16) * dI + 32 * c, dI * 2); _tile_dpbf16ps(4, 0, 1);
            _tile_loadd(0, qbuf + (1 * 16) * dI + 32 * c, dI * 2); _tile_dpbf16ps(5, 0, 1);
            _tile_loadd(0, qbuf + (2 * 16) * dI + 32 * c, dI * 2); _tile_dpbf16ps(6, 0, 1);
            _tile_loadd(0, qbuf + (3 * 16) * dI + 32 * c, dI * 2); _tile_dpbf16ps(7, 0, 1);
        }
        _tile_stored(4, cbuf + 0, 64); _tile_stored(5, cbuf + 256, 64);
        _tile_stored(6, cbuf + 512, 64); _tile_stored(7, cbuf + 768, 64);
        for (int qi = 0; qi < nb; qi++) {
            const float *w = J->w + (int64_t)(t0 + qi) * H;
            __m512 total = _mm512_setzero_ps();
            for (int j = 0; j < H; j++)
                total = _mm512_fmadd_ps(_mm512_set1_ps(w[j]), _mm512_max_ps(_mm512_load_ps(cbuf + j * 256 + qi * 16),
                                                                            _mm512_setzero_ps()), total);
            _mm512_storeu_ps(out + qi * ld + 16 * b, total);
        }
    }
}
#endif

#ifdef PROFILE
#include <time.h>
double dsa_prefill_profile[3];
static inline double now_s(void) { struct timespec ts; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts); return ts.tv_sec + 1e-9 * ts.tv_nsec; }
#define PROF_T(x) double x = now_s()
#define PROF_ADD(i, a, b) dsa_prefill_profile[i] += (b) - (a)
#else
#define PROF_T(x)
#define PROF_ADD(i, a, b)
#endif

typedef struct {
    const Job *J;
    const uint32_t *packed;
    atomic_int next; /* rows are taken from the last (the most keys) down */
    atomic_int failed;
} Shared;


static void *worker(void *arg) {
    Shared *sh = arg;
    const Job *J = sh->J;
    const int S = J->S, k = J->top_k;
    const int cap = (k < S ? k : S) + 16;
    const int use_amx = amx_usable(J);
    float *scores = aligned_alloc(64, ((size_t)S + 64) * 4);
    uint32_t *bits = malloc(((size_t)S + 16) * 4), *cand = malloc(((size_t)S + 16) * 4);
    int32_t *sel = malloc(((size_t)BLOCK * cap + S + 16) * 4);
    AttnScratch W = {aligned_alloc(64, (size_t)MAX_GROUP * cap * 4 + 64),
                     aligned_alloc(64, (size_t)MAX_GROUP * (cap + 2) * 2 + 64), cap};
    BlockScratch B = {0};
    /* AMX index scores: the shipped indexers' 4 heads, 32 or 64 dims; a block's rows of scores at once */
    const int amx_index = use_amx && J->index_heads == 4 && (J->index_dim == 32 || J->index_dim == 64);
    const int64_t ld = (int64_t)S + 64;
    float *block_scores = amx_index ? aligned_alloc(64, (size_t)BLOCK * ld * 4) : NULL;
    bf16 *qbuf = amx_index ? aligned_alloc(64, (size_t)4 * 16 * 64 * 2) : NULL;
    float *cbuf = amx_index ? aligned_alloc(64, (size_t)4 * 256 * 4) : NULL;
    int ok = scores && bits && cand && sel && W.scores && W.probs && (!use_amx || block_scratch_init(&B, S))
             && (!amx_index || (block_scores && qbuf && cbuf));
    if (!ok) {
        atomic_store(&sh->failed, 1);
    } else {
        if (use_amx) amx_configure();
        const int blocks = (J->T + BLOCK - 1) / BLOCK;
        int counts[BLOCK];
        for (;;) {
            int r = atomic_fetch_add(&sh->next, 1);
            if (r >= blocks || atomic_load(&sh->failed)) break;
            int t0 = (blocks - 1 - r) * BLOCK; /* the last block (the most keys) first */
            int nb = J->T - t0 < BLOCK ? J->T - t0 : BLOCK;
            const int n_max = S - J->T + t0 + nb;
#if HAVE_AMX
            if (amx_index && n_max > k) {
                PROF_T(c0);
                for (int r0 = 0; r0 < nb; r0 += 16) {
                    int nh = nb - r0 < 16 ? nb - r0 : 16;
                    index_scores_block_amx(J, sh->packed, t0 + r0, nh, S - J->T + t0 + r0 + nh, block_scores + r0 * ld,
                                           ld, qbuf, cbuf);
                }
                PROF_T(c1); PROF_ADD(0, c0, c1);
            }
#endif
            for (int qi = 0; qi < nb; qi++) {
                int t = t0 + qi;
                int n = S - J->T + t + 1; /* keys this query sees */
                int32_t *row = sel + (size_t)qi * cap;
                PROF_T(a0);
                if (n <= k) {
                    for (int s = 0; s < n; s++) row[s] = s;
                    counts[qi] = n;
                } else {
                    const float *row_scores = scores;
                    if (amx_index) row_scores = block_scores + qi * ld;
                    else index_scores_row(J, sh->packed, t, n, scores);
                    PROF_T(a1); PROF_ADD(0, a0, a1);
                    counts[qi] = top_k_row(row_scores, n, k, bits, cand, row);
                    PROF_T(a2); PROF_ADD(1, a1, a2);
                }
                if (J->selected) {
                    int32_t *dst = J->selected + (int64_t)t * k;
                    for (int i = 0; i < k; i++) dst[i] = i < counts[qi] ? row[i] : -1;
                }
            }
            PROF_T(b0);
            if (use_amx) attend_block_amx(J, t0, nb, sel, cap, counts, &B);
            else
                for (int qi = 0; qi < nb; qi++) attend_row(J, t0 + qi, sel + (size_t)qi * cap, counts[qi], &W);
            PROF_T(b1); PROF_ADD(2, b0, b1);
        }
        if (use_amx) _tile_release();
    }
    free(scores); free(bits); free(cand); free(sel); free(W.scores); free(W.probs);
    free(block_scores); free(qbuf); free(cbuf);
    block_scratch_free(&B);
    return NULL;
}

int dsa_prefill(const Job *J, int threads) {
    if (J->index_heads > MAX_INDEX_HEADS || J->index_dim > MAX_INDEX_DIM || J->index_dim % 2) return -2;
    if (J->heads % J->kv_heads || J->heads / J->kv_heads > MAX_GROUP) return -2;
    if (J->head_dim % 32 || J->head_dim > MAX_HEAD_DIM || J->T > J->S || J->top_k < 1) return -2;
    uint32_t *packed = NULL;
    if (J->S > J->top_k) {
        packed = pack_index_keys(J, J->S);
        if (!packed) return -1;
    }
    Shared sh = {.J = J, .packed = packed};
    atomic_init(&sh.next, 0);
    atomic_init(&sh.failed, 0);
    if (threads < 1) threads = 1;
    int blocks = (J->T + BLOCK - 1) / BLOCK;
    if (threads > blocks) threads = blocks;
    pthread_t tid[64];
    int started = 0;
    for (int i = 1; i < threads && i < 64; i++)
        if (pthread_create(&tid[started], NULL, worker, &sh) == 0) started++;
    worker(&sh);
    for (int i = 0; i < started; i++) pthread_join(tid[i], NULL);
    free(packed);
    return atomic_load(&sh.failed) ? -1 : 0;
}

#else /* no AVX512-BF16: the runner keeps the torch path */

int dsa_prefill(const Job *J, int threads) { (void)J; (void)threads; return -3; }

#endif
