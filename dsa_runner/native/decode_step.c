/* One decode step of a Llama-family model for a few rows (batch <= 32), weight-only int8 or 4-bit, on the CPU.
 *
 * Why C: at batch 1 a 135M model is bound by reading its weights once per token (~135 MB in int8). The
 * torch path spends about half of each step in the dispatcher and in small ops between the matmuls, and
 * aten's int8 kernel reads the weights at well under the memory bandwidth. Here the whole step (all
 * layers, the LM head) is one job for a few threads: the matrix-vector products split their output rows
 * over the threads, everything else runs between barriers, and activations stay in float32.
 *
 * The maths is the one of dsa_runner/fast_decode.py:
 *   h = embed[token]
 *   per layer: x = rms(h) * ln1;  [q | k | v | k_I] = x W_qkv;  rotary(q, k);  k, v -> cache
 *              k_I -> LayerNorm -> rotary on its first rope dims -> index-key cache      (DSA only)
 *              dense (no DSA, or S <= top_k): o = softmax(q K^T * scaling, masked) V
 *              sparse (DSA, S > top_k):  [q_I | w] = x W_iq;  rotary(q_I);  w *= w_scale
 *                  I(s) = sum_j w_j ReLU(q_I,j . k_I(s));  sel = top_k(I) (ties to the latest key)
 *                  o = softmax(q K[sel]^T * scaling) V[sel]
 *              h += o W_o
 *              x = rms(h) * ln2;  h += (silu(x W_gate) * (x W_up)) W_down
 *   logits = rms(h) * norm  W_head
 * Weights: int8, one bfloat16 scale per output row; the layers' matrices in 4 bits instead where the model
 * file has them as Q4_1 (Q4Mat). Norm weights float32. Embedding, caches bfloat16.
 * Built by dsa_runner/native_decode.py with the machine's compiler (-O3 -march=native -pthread).
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

typedef uint16_t bf16;

#define MAX_ROWS 32 /* rows of the batch; dsa_decode_step returns -2 above */
#ifndef PREFETCH_BLOCKS
#define PREFETCH_BLOCKS 2
#endif

static inline float bf16_to_f32(bf16 v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline bf16 f32_to_bf16(float f) { /* round to nearest even, as torch does */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

/* A matrix in 4 bits, the model file's Q4_1 blocks (32 weights of one row: w = d * q + m, q in 0..15,
 * d and m float16) regrouped at load so that one 64-byte load holds the same block of 4 consecutive rows:
 *   qs[(g * nblk + k) * 64 + 16 * j + i]: the block's byte i of row 4g + j, as in the file (low nibble:
 *       column 32k + i, high nibble: column 32k + 16 + i)
 *   dm[(g * nblk + k) * 8 + j]: d of row 4g + j;  dm[... + 4 + j]: its m
 * Rows come in multiples of 4, columns in multiples of 32. The bytes are the file's (66 MB for the 30 layers
 * of SmolLM2-135M against 106 MB in int8): nothing is quantised again.                                  */
typedef struct {
    const uint8_t *qs;
    const uint16_t *dm;
} Q4Mat;

typedef struct {
    const float *ln1, *ln2;
    float eps1, eps2;
    const int8_t *qkv; const bf16 *qkv_scale; /* rows: q (H*D), k (Hkv*D), v (Hkv*D), k_I (dI, DSA) */
    const int8_t *o; const bf16 *o_scale;     /* (hidden, H*D) */
    const int8_t *gu; const bf16 *gu_scale;   /* (2*inter, hidden): gate rows then up rows */
    const int8_t *down; const bf16 *down_scale; /* (hidden, inter) */
    const float *knorm_w, *knorm_b;           /* index-key LayerNorm (DSA only) */
    float knorm_eps;
    const int8_t *iqw; const bf16 *iqw_scale; /* (H_I * dI + H_I, hidden): index queries, then weights (DSA) */
    /* 4-bit weights (Q4x4 below) of the same matrices where the model file has them; qs NULL: the int8 ones.
       qkv4 holds the first qkv4_rows rows of the fused projection (q, k, v), the rest stay int8 (DSA's
       index keys are not in the file). */
    Q4Mat qkv4, o4, gu4, down4;
    int qkv4_rows;
} Layer;

typedef struct {
    int n_layers, hidden, n_heads, n_kv, head_dim, inter, vocab;
    int index_dim, index_rope_dim, max_pos; /* index_dim 0: no DSA index keys */
    float scaling;
    const bf16 *embed;                 /* (vocab, hidden) */
    const float *final_norm; float final_eps;
    const int8_t *head; const bf16 *head_scale; /* (vocab, hidden) */
    const float *cos, *sin;            /* (max_pos, head_dim): the model's rotary table */
    const float *icos, *isin;          /* (max_pos, index_rope_dim / 2): the indexer's */
    const Layer *layers;
    int index_heads;                   /* H_I; 0: no sparse steps */
    float index_w_scale;               /* H_I^-1/2 * dI^-1/2 */
} Model;

typedef struct {       /* one cache layer: element offsets of batch row, head, position */
    bf16 *k, *v;
    int64_t k_row, k_head, k_pos, v_row, v_head, v_pos;
} CacheView;

/* ---------------------------------------------------------------------------------------------- */
/* y[b, r] (+)= scale[r] * <x[b, :K], W[r, :K]> for r in [r0, r1), b < B                            */
/* The dot products of four weight rows at once, against up to GROUP input rows (16 accumulators). */

#define GROUP 4

#if defined(__AVX2__)
static inline float sum256(__m256 v) { /* the AVX2 paths' horizontal sum, one definition for all three */
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

#if defined(__AVX512F__)
typedef __m512 vf;
#define VW 16
static inline vf vzero(void) { return _mm512_setzero_ps(); }
static inline vf load_w(const int8_t *w) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)w))); }
static inline vf load_x(const float *x) { return _mm512_loadu_ps(x); }
static inline vf fma_(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline float hsum(vf v) { return _mm512_reduce_add_ps(v); }
#elif defined(__AVX2__) && defined(__FMA__)
typedef __m256 vf;
#define VW 8
static inline vf vzero(void) { return _mm256_setzero_ps(); }
static inline vf load_w(const int8_t *w) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)w))); }
static inline vf load_x(const float *x) { return _mm256_loadu_ps(x); }
static inline vf fma_(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline float hsum(vf v) { return sum256(v); }
#else
#define VW 0 /* no vector path: the plain loop below */
#endif

/* dots[b][j] = <x[b], row j of the block at w0> over the first KV columns, b < nb (nb <= GROUP) */
static inline __attribute__((always_inline)) void
block_dots(const int8_t *w0, int K, int KV, const float *x, const int nb, const int8_t *ahead,
           float dots[GROUP][4]) {
#if VW
    vf acc[GROUP][4];
    for (int b = 0; b < nb; b++)
        for (int j = 0; j < 4; j++) acc[b][j] = vzero();
    for (int c = 0; c < KV; c += VW) {
        /* the blocks ahead, a cache line every 64 bytes of this row: four interleaved row streams defeat
           the hardware prefetcher, and the loop then waits on memory (measured: 13 vs 31 GB/s a core) */
        if (ahead && (c & 15) == 0) __builtin_prefetch(ahead + 4 * c, 0, 3);
        const vf w_0 = load_w(w0 + c), w_1 = load_w(w0 + K + c);
        const vf w_2 = load_w(w0 + 2 * K + c), w_3 = load_w(w0 + 3 * K + c);
        for (int b = 0; b < nb; b++) {
            const vf xv = load_x(x + (size_t)b * K + c);
            acc[b][0] = fma_(w_0, xv, acc[b][0]);
            acc[b][1] = fma_(w_1, xv, acc[b][1]);
            acc[b][2] = fma_(w_2, xv, acc[b][2]);
            acc[b][3] = fma_(w_3, xv, acc[b][3]);
        }
    }
    for (int b = 0; b < nb; b++)
        for (int j = 0; j < 4; j++) dots[b][j] = hsum(acc[b][j]);
#else
    (void)w0; (void)K; (void)KV; (void)x; (void)ahead;
    for (int b = 0; b < nb; b++)
        for (int j = 0; j < 4; j++) dots[b][j] = 0.f;
#endif
}

static void gemv(const int8_t *W, const bf16 *scale, int K, const float *x, int B, int r0, int r1,
                 float *y, int ldy, int y_first, int accumulate) {
    /* y's column 0 is weight row y_first */
    const int KV = VW ? K - K % VW : 0; /* columns the vector loop covers; the rest below */
    int r = r0;
    for (; r + 4 <= r1; r += 4) {
        const int8_t *w0 = W + (size_t)r * K;
        for (int b0 = 0; b0 < B; b0 += GROUP) {
            float dots[GROUP][4];
            const int nb = B - b0 < GROUP ? B - b0 : GROUP;
            /* the weight block stays in L1 for the later groups of input rows: prefetch once */
            const int8_t *ahead = b0 == 0 ? w0 + (size_t)PREFETCH_BLOCKS * 4 * K : NULL;
            const float *xb = x + (size_t)b0 * K;
            switch (nb) { /* constant nb: the loops over input rows unroll */
            case 1: block_dots(w0, K, KV, xb, 1, ahead, dots); break;
            case 2: block_dots(w0, K, KV, xb, 2, ahead, dots); break;
            case 3: block_dots(w0, K, KV, xb, 3, ahead, dots); break;
            default: block_dots(w0, K, KV, xb, 4, ahead, dots); break;
            }
            for (int b = 0; b < nb; b++) {
                for (int j = 0; j < 4; j++) {
                    float dot = dots[b][j];
                    const int8_t *w = w0 + (size_t)j * K;
                    for (int c = KV; c < K; c++) dot += xb[(size_t)b * K + c] * (float)w[c];
                    const float v = bf16_to_f32(scale[r + j]) * dot;
                    float *out = y + (size_t)(b0 + b) * ldy + (r + j - y_first);
                    *out = accumulate ? *out + v : v;
                }
            }
        }
    }
    for (; r < r1; r++) {
        const int8_t *w = W + (size_t)r * K;
        for (int b = 0; b < B; b++) {
            const float *xb = x + (size_t)b * K;
            float dot = 0.f;
            for (int c = 0; c < K; c++) dot += xb[c] * (float)w[c];
            const float v = bf16_to_f32(scale[r]) * dot;
            float *out = y + (size_t)b * ldy + (r - y_first);
            *out = accumulate ? *out + v : v;
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* The same products as integer dot products on quantised activations (llama.cpp's q8_0 scheme):
 * each input row is quantised to int8 in blocks of QK columns, one float scale d = max|x| / 127 per
 * block, and  y[b, r] = scale[r] * sum over blocks of d * <q, W[r, block]>  with the inner sums in
 * int32. The float path above converts every weight to float and spends one FMA per weight and input
 * row; here one instruction multiplies and adds 64 (VNNI) or 32 (AVX2) byte pairs.
 * The instructions multiply unsigned by signed bytes: the weights' absolute values go in as the
 * unsigned operand and their signs move onto the activations (q is in [-127, 127]: negating is exact;
 * |w| <= 128 and two products per int16 stay below 32767 on AVX2's pairwise path).
 * A thread quantises the whole input itself (a few thousand values against its share of a matrix):
 * no barrier, and the same bits on any number of threads.                                           */

#define QK 32

typedef struct {
    const int8_t *q;   /* (B, K) */
    const float *d;    /* (B, K / QK): the block scales */
    const float *lane; /* (B, K / 4): the scale of each group of 4 columns, in the vector lanes' layout */
    const float *s;    /* (B, K / QK): d * the sum of the block's q (the 4-bit weights' offset m multiplies it) */
} QRows;

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define QW 64 /* columns per vector step */
typedef __m512 qf;
static inline qf qzero(void) { return _mm512_setzero_ps(); }
static inline float qhsum(qf v) { return _mm512_reduce_add_ps(v); }
#elif defined(__AVX2__) && defined(__FMA__)
#define QW 32
typedef __m256 qf;
static inline qf qzero(void) { return _mm256_setzero_ps(); }
static inline float qhsum(qf v) { return sum256(v); }
#else
#define QW 0 /* no vector path: integer dot products in plain C */
#endif

/* What this build runs, for the Python side to check against the ISA it asked for. */
const char *dsa_isa(void) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
    return "avx512-vnni";
#elif defined(__AVX512F__) && defined(__AVX512BW__)
    return "avx512";
#elif QW
    return "avx2";
#else
    return "generic";
#endif
}

static int int8_activations = 1; /* 0: every product on the float path (for A/B measurements) */

int dsa_set_int8_activations(int on) {
    const int was = int8_activations;
    int8_activations = on != 0;
    return was;
}

/* q = x * 127 / max|x| rounded to the nearest integer (ties to even, as the vector conversions do) */
static inline void quantize_block(const float *x, int8_t *q, float *scale) {
#if QW == 64
    const __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
    _mm_storeu_si128((__m128i *)q, _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(a, inv))));
    _mm_storeu_si128((__m128i *)(q + 16), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(b, inv))));
#elif QW == 32
    const __m256 sign = _mm256_set1_ps(-0.f);
    __m256 v[4], m = _mm256_setzero_ps();
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[i]));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const __m256 inv = _mm256_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
    __m256i i32[4];
    for (int i = 0; i < 4; i++) i32[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));
    /* the packs work within 128-bit halves: put the eight groups of four back in order */
    const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i32[0], i32[1]), _mm256_packs_epi32(i32[2], i32[3]));
    _mm256_storeu_si256((__m256i *)q, _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
#else
    float amax = 0.f;
    for (int i = 0; i < QK; i++) amax = fmaxf(amax, fabsf(x[i]));
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    const float magic = 12582912.f; /* 1.5 * 2^23: adding it rounds |v| < 2^22 to an integer, ties to even */
    for (int i = 0; i < QK; i++) {
        volatile float r = x[i] * inv + magic; /* volatile: two roundings, not one folded expression */
        q[i] = (int8_t)(int)(r - magic);
    }
#endif
    *scale = amax / 127.f;
}

static void quantize_rows(const float *x, int B, int K, int8_t *q, float *d, float *lane, float *sums) {
    for (int b = 0; b < B; b++) {
        for (int c = 0; c < K; c += QK) {
            float scale;
            const int8_t *qb = q + (size_t)b * K + c;
            quantize_block(x + (size_t)b * K + c, q + (size_t)b * K + c, &scale);
            d[(size_t)b * (K / QK) + c / QK] = scale;
            int sum = 0;
            for (int i = 0; i < QK; i++) sum += qb[i];
            sums[(size_t)b * (K / QK) + c / QK] = scale * (float)sum;
            for (int i = 0; i < QK / 4; i++) lane[((size_t)b * K + c) / 4 + i] = scale;
        }
    }
}

/* the calling thread's quantised copy of x; NULL when K is not whole blocks or memory runs out */
static const QRows *quantize_for_thread(const float *x, int B, int K) {
    static __thread struct { int8_t *q; float *d, *lane, *s; size_t cap; QRows rows; } buf;
    if (!int8_activations || K % QK) return NULL;
    const size_t n = (size_t)B * K;
    if (n > buf.cap) {
        free(buf.q); free(buf.d); free(buf.lane); free(buf.s);
        buf.q = malloc(n);
        buf.d = malloc(sizeof(float) * (n / QK));
        buf.lane = malloc(sizeof(float) * (n / 4));
        buf.s = malloc(sizeof(float) * (n / QK));
        buf.cap = buf.q && buf.d && buf.lane && buf.s ? n : 0;
        if (!buf.cap) return NULL;
    }
    quantize_rows(x, B, K, buf.q, buf.d, buf.lane, buf.s);
    buf.rows.q = buf.q; buf.rows.d = buf.d; buf.rows.lane = buf.lane; buf.rows.s = buf.s;
    return &buf.rows;
}

/* dots[b][j] = sum over the blocks of the first KV columns of d * <q[b], row j of the block at w0> */
static inline __attribute__((always_inline)) void
block_qdots(const int8_t *w0, int K, int KV, const QRows *x, int b0, const int nb, const int8_t *ahead,
            float dots[GROUP][4]) {
#if QW
    qf acc[GROUP][4];
    for (int b = 0; b < nb; b++)
        for (int j = 0; j < 4; j++) acc[b][j] = qzero();
    for (int c = 0; c < KV; c += QW) {
        if (ahead) /* as in block_dots: the next blocks' bytes at the pace this loop reads (4 rows x QW) */
            for (int p = 0; p < 4 * QW; p += 64) __builtin_prefetch(ahead + 4 * c + p, 0, 3);
#if QW == 64
        const __m512i zero = _mm512_setzero_si512();
        __m512i aw[4];
        __mmask64 neg[4];
        for (int j = 0; j < 4; j++) {
            const __m512i w = _mm512_loadu_si512((const void *)(w0 + (size_t)j * K + c));
            aw[j] = _mm512_abs_epi8(w);
            neg[j] = _mm512_movepi8_mask(w);
        }
        for (int b = 0; b < nb; b++) {
            const __m512i xq = _mm512_loadu_si512((const void *)(x->q + (size_t)(b0 + b) * K + c));
            const __m512 d = _mm512_loadu_ps(x->lane + ((size_t)(b0 + b) * K + c) / 4);
            for (int j = 0; j < 4; j++) {
                const __m512i sx = _mm512_mask_sub_epi8(xq, neg[j], zero, xq);
#if defined(__AVX512VNNI__)
                const __m512i p = _mm512_dpbusd_epi32(zero, aw[j], sx);
#else
                const __m512i p = _mm512_madd_epi16(_mm512_maddubs_epi16(aw[j], sx), _mm512_set1_epi16(1));
#endif
                acc[b][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), d, acc[b][j]);
            }
        }
#else
        const __m256i ones = _mm256_set1_epi16(1);
        __m256i w[4], aw[4];
        for (int j = 0; j < 4; j++) {
            w[j] = _mm256_loadu_si256((const __m256i *)(w0 + (size_t)j * K + c));
            aw[j] = _mm256_abs_epi8(w[j]);
        }
        for (int b = 0; b < nb; b++) {
            const __m256i xq = _mm256_loadu_si256((const __m256i *)(x->q + (size_t)(b0 + b) * K + c));
            const __m256 d = _mm256_loadu_ps(x->lane + ((size_t)(b0 + b) * K + c) / 4);
            for (int j = 0; j < 4; j++) {
                const __m256i sx = _mm256_sign_epi8(xq, w[j]);
                const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw[j], sx), ones);
                acc[b][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), d, acc[b][j]);
            }
        }
#endif
    }
    for (int b = 0; b < nb; b++)
        for (int j = 0; j < 4; j++) dots[b][j] = qhsum(acc[b][j]);
#else
    (void)w0; (void)K; (void)KV; (void)x; (void)b0; (void)ahead;
    for (int b = 0; b < nb; b++)
        for (int j = 0; j < 4; j++) dots[b][j] = 0.f;
#endif
}

/* the blocks of columns [c0, K) of one weight row against input row b, in plain C */
static inline float tail_qdot(const int8_t *w, int K, int c0, const QRows *x, int b) {
    float dot = 0.f;
    const int8_t *q = x->q + (size_t)b * K;
    for (int c = c0; c < K; c += QK) {
        int32_t s = 0;
        for (int i = c; i < c + QK; i++) s += (int32_t)q[i] * w[i];
        dot += x->d[(size_t)b * (K / QK) + c / QK] * (float)s;
    }
    return dot;
}

/* as gemv, on the quantised rows x */
static void gemv_q(const int8_t *W, const bf16 *scale, int K, const QRows *x, int B, int r0, int r1,
                   float *y, int ldy, int y_first, int accumulate) {
    const int KV = QW ? K - K % QW : 0;
    int r = r0;
    for (; r + 4 <= r1; r += 4) {
        const int8_t *w0 = W + (size_t)r * K;
        for (int b0 = 0; b0 < B; b0 += GROUP) {
            float dots[GROUP][4];
            const int nb = B - b0 < GROUP ? B - b0 : GROUP;
            const int8_t *ahead = b0 == 0 ? w0 + (size_t)PREFETCH_BLOCKS * 4 * K : NULL;
            switch (nb) {
            case 1: block_qdots(w0, K, KV, x, b0, 1, ahead, dots); break;
            case 2: block_qdots(w0, K, KV, x, b0, 2, ahead, dots); break;
            case 3: block_qdots(w0, K, KV, x, b0, 3, ahead, dots); break;
            default: block_qdots(w0, K, KV, x, b0, 4, ahead, dots); break;
            }
            for (int b = 0; b < nb; b++) {
                for (int j = 0; j < 4; j++) {
                    float dot = dots[b][j];
                    if (KV < K) dot += tail_qdot(w0 + (size_t)j * K, K, KV, x, b0 + b);
                    const float v = bf16_to_f32(scale[r + j]) * dot;
                    float *out = y + (size_t)(b0 + b) * ldy + (r + j - y_first);
                    *out = accumulate ? *out + v : v;
                }
            }
        }
    }
    for (; r < r1; r++) {
        for (int b = 0; b < B; b++) {
            const float v = bf16_to_f32(scale[r]) * tail_qdot(W + (size_t)r * K, K, 0, x, b);
            float *out = y + (size_t)b * ldy + (r - y_first);
            *out = accumulate ? *out + v : v;
        }
    }
}

/* y (+)= x W^T over weight rows [r0, r1): on qx (x quantised by quantize_for_thread) when given, else
   on the float rows x */
static inline void matvec(const int8_t *W, const bf16 *scale, int K, const float *x, const QRows *qx, int B,
                          int r0, int r1, float *y, int ldy, int y_first, int accumulate) {
    if (qx) gemv_q(W, scale, K, qx, B, r0, r1, y, ldy, y_first, accumulate);
    else gemv(W, scale, K, x, B, r0, r1, y, ldy, y_first, accumulate);
}

/* ---------------------------------------------------------------------------------------------- */
/* The same products on 4-bit weights (Q4Mat): per block of 32 columns,
 *   sum_i (d q_i + m) dx qx_i = d dx <q, qx> + m (dx sum qx)
 * with <q, qx> in int32 (the nibbles as the unsigned operand of vpdpbusd / vpmaddubsw, the int8
 * activations as the signed one: no sign shuffling as for int8 weights) and dx sum qx from quantize_rows.
 * One 64-byte load is the block of 4 rows: one vector instruction forms the 16 lanes (4 per row) at once,
 * and the rows' scales d go in as one vector. Output rows come 4 at a time (share() gives multiples of 4;
 * the loader only takes matrices whose rows are).                                                      */

#ifndef Q4_PREFETCH
/* blocks ahead (2 KB), in the scales' stream too: from L3 the loop waits on memory otherwise; decode step
   at 1 thread (AVX-512) 8.7 ms with 8 blocks, 7.4-7.9 ms with 32-128 */
#define Q4_PREFETCH 32
#endif

static inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0x1f) u = sign | 0x7f800000u | (man << 13);
    else if (exp) u = sign | ((exp + 112u) << 23) | (man << 13);
    else if (!man) u = sign;
    else { /* subnormal: shift the mantissa up to its leading one, lowering the exponent as much */
        uint32_t e = 113;
        while (!(man & 0x400u)) { man <<= 1; e--; }
        u = sign | (e << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* dots[b][j] = <x row b0 + b, row j of the group> for the group's nblk blocks (scales applied) */
static inline __attribute__((always_inline)) void
q4_group_qdots(const uint8_t *qs, const uint16_t *dm, int nblk, const QRows *x, int K, int b0, const int nb,
               float dots[GROUP][4]) {
#if QW == 64
    const __m512i low = _mm512_set1_epi8(0x0f);
    const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
#if !defined(__AVX512VNNI__)
    const __m512i ones = _mm512_set1_epi16(1);
#endif
    __m512 acc[GROUP];
    __m128 macc[GROUP];
    for (int b = 0; b < nb; b++) {
        acc[b] = _mm512_setzero_ps();
        macc[b] = _mm_setzero_ps();
    }
    for (int k = 0; k < nblk; k++) {
        _mm_prefetch((const char *)(qs + 64 * (k + Q4_PREFETCH)), _MM_HINT_T0);
        if ((k & 7) == 0) _mm_prefetch((const char *)(dm + 8 * (k + Q4_PREFETCH)), _MM_HINT_T0);
        const __m512i v = _mm512_loadu_si512((const void *)(qs + 64 * k));
        const __m512i lo = _mm512_and_si512(v, low), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
        const __m256 dmf = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(dm + 8 * k)));
        const __m512 dv = _mm512_permutexvar_ps(spread, _mm512_castps256_ps512(dmf));
        const __m128 mv = _mm256_extractf128_ps(dmf, 1);
        for (int b = 0; b < nb; b++) {
            const int8_t *q = x->q + (size_t)(b0 + b) * K + QK * k;
            const __m512i xlo = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)q));
            const __m512i xhi = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(q + 16)));
#if defined(__AVX512VNNI__)
            const __m512i p = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xlo), hi, xhi);
#else /* two products of <= 15 * 127 per int16, two such sums added: <= 7620, no saturation */
            const __m512i p = _mm512_madd_epi16(
                _mm512_add_epi16(_mm512_maddubs_epi16(lo, xlo), _mm512_maddubs_epi16(hi, xhi)), ones);
#endif
            const size_t bi = (size_t)(b0 + b) * nblk + k;
            acc[b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(dv, _mm512_set1_ps(x->d[bi])), acc[b]);
            macc[b] = _mm_fmadd_ps(mv, _mm_set1_ps(x->s[bi]), macc[b]);
        }
    }
    for (int b = 0; b < nb; b++) {
        const __m128 t0 = _mm512_extractf32x4_ps(acc[b], 0), t1 = _mm512_extractf32x4_ps(acc[b], 1);
        const __m128 t2 = _mm512_extractf32x4_ps(acc[b], 2), t3 = _mm512_extractf32x4_ps(acc[b], 3);
        _mm_storeu_ps(dots[b], _mm_add_ps(_mm_hadd_ps(_mm_hadd_ps(t0, t1), _mm_hadd_ps(t2, t3)), macc[b]));
    }
#elif QW == 32
    const __m256i low = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    const __m256i s01 = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1), s23 = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3);
    __m256 acc[GROUP][2];
    __m128 macc[GROUP];
    for (int b = 0; b < nb; b++) {
        acc[b][0] = acc[b][1] = _mm256_setzero_ps();
        macc[b] = _mm_setzero_ps();
    }
    for (int k = 0; k < nblk; k++) {
        _mm_prefetch((const char *)(qs + 64 * (k + Q4_PREFETCH)), _MM_HINT_T0);
        if ((k & 7) == 0) _mm_prefetch((const char *)(dm + 8 * (k + Q4_PREFETCH)), _MM_HINT_T0);
        const __m256i va = _mm256_loadu_si256((const __m256i *)(qs + 64 * k));      /* rows 0, 1 */
        const __m256i vb = _mm256_loadu_si256((const __m256i *)(qs + 64 * k + 32)); /* rows 2, 3 */
        const __m256i loa = _mm256_and_si256(va, low), hia = _mm256_and_si256(_mm256_srli_epi16(va, 4), low);
        const __m256i lob = _mm256_and_si256(vb, low), hib = _mm256_and_si256(_mm256_srli_epi16(vb, 4), low);
        const __m256 dmf = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(dm + 8 * k)));
        const __m256 d01 = _mm256_permutevar8x32_ps(dmf, s01), d23 = _mm256_permutevar8x32_ps(dmf, s23);
        const __m128 mv = _mm256_extractf128_ps(dmf, 1);
        for (int b = 0; b < nb; b++) {
            const int8_t *q = x->q + (size_t)(b0 + b) * K + QK * k;
            const __m256i xlo = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)q));
            const __m256i xhi = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(q + 16)));
            /* <= 2 * 15 * 127 per int16 and product, two added: <= 7620, no saturation */
            const __m256i pa = _mm256_madd_epi16(
                _mm256_add_epi16(_mm256_maddubs_epi16(loa, xlo), _mm256_maddubs_epi16(hia, xhi)), ones);
            const __m256i pb = _mm256_madd_epi16(
                _mm256_add_epi16(_mm256_maddubs_epi16(lob, xlo), _mm256_maddubs_epi16(hib, xhi)), ones);
            const size_t bi = (size_t)(b0 + b) * nblk + k;
            const __m256 dx = _mm256_set1_ps(x->d[bi]);
            acc[b][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pa), _mm256_mul_ps(d01, dx), acc[b][0]);
            acc[b][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pb), _mm256_mul_ps(d23, dx), acc[b][1]);
            macc[b] = _mm_fmadd_ps(mv, _mm_set1_ps(x->s[bi]), macc[b]);
        }
    }
    for (int b = 0; b < nb; b++) {
        const __m128 t0 = _mm256_castps256_ps128(acc[b][0]), t1 = _mm256_extractf128_ps(acc[b][0], 1);
        const __m128 t2 = _mm256_castps256_ps128(acc[b][1]), t3 = _mm256_extractf128_ps(acc[b][1], 1);
        _mm_storeu_ps(dots[b], _mm_add_ps(_mm_hadd_ps(_mm_hadd_ps(t0, t1), _mm_hadd_ps(t2, t3)), macc[b]));
    }
#else
    for (int b = 0; b < nb; b++)
        for (int j = 0; j < 4; j++) dots[b][j] = 0.f;
    for (int k = 0; k < nblk; k++) {
        const uint8_t *blk = qs + 64 * k;
        for (int b = 0; b < nb; b++) {
            const int8_t *q = x->q + (size_t)(b0 + b) * K + QK * k;
            const size_t bi = (size_t)(b0 + b) * nblk + k;
            for (int j = 0; j < 4; j++) {
                int32_t s = 0;
                for (int i = 0; i < 16; i++) s += (blk[16 * j + i] & 15) * q[i] + (blk[16 * j + i] >> 4) * q[16 + i];
                const float d = f16_to_f32(dm[8 * k + j]), m = f16_to_f32(dm[8 * k + 4 + j]);
                dots[b][j] += d * x->d[bi] * (float)s + m * x->s[bi];
            }
        }
    }
#endif
}

/* as gemv_q, on 4-bit weights; r0 and r1 multiples of 4 */
static void gemv_q4(const Q4Mat *W, int K, const QRows *x, int B, int r0, int r1, float *y, int ldy, int y_first,
                    int accumulate) {
    const int nblk = K / QK;
    for (int r = r0; r < r1; r += 4) {
        const uint8_t *qs = W->qs + (size_t)(r / 4) * nblk * 64;
        const uint16_t *dm = W->dm + (size_t)(r / 4) * nblk * 8;
        for (int b0 = 0; b0 < B; b0 += GROUP) {
            float dots[GROUP][4];
            const int nb = B - b0 < GROUP ? B - b0 : GROUP;
            switch (nb) { /* constant nb: the loops over input rows unroll */
            case 1: q4_group_qdots(qs, dm, nblk, x, K, b0, 1, dots); break;
            case 2: q4_group_qdots(qs, dm, nblk, x, K, b0, 2, dots); break;
            case 3: q4_group_qdots(qs, dm, nblk, x, K, b0, 3, dots); break;
            default: q4_group_qdots(qs, dm, nblk, x, K, b0, 4, dots); break;
            }
            for (int b = 0; b < nb; b++)
                for (int j = 0; j < 4; j++) {
                    float *out = y + (size_t)(b0 + b) * ldy + (r + j - y_first);
                    *out = accumulate ? *out + dots[b][j] : dots[b][j];
                }
        }
    }
}

/* 4-bit weights on float activations (dsa_set_int8_activations(0): the reference the integer path is
   measured against): each block dequantised to float, then float dot products */
static void gemv4_f(const Q4Mat *W, int K, const float *x, int B, int r0, int r1, float *y, int ldy, int y_first,
                    int accumulate) {
    const int nblk = K / QK;
    for (int r = r0; r < r1; r += 4) {
        const uint8_t *qs = W->qs + (size_t)(r / 4) * nblk * 64;
        const uint16_t *dm = W->dm + (size_t)(r / 4) * nblk * 8;
        for (int b = 0; b < B; b++) {
            float dot[4] = {0.f, 0.f, 0.f, 0.f};
            const float *xb = x + (size_t)b * K;
            for (int k = 0; k < nblk; k++)
                for (int j = 0; j < 4; j++) {
                    const float d = f16_to_f32(dm[8 * k + j]), m = f16_to_f32(dm[8 * k + 4 + j]);
                    const uint8_t *blk = qs + 64 * k + 16 * j;
                    float s = 0.f;
                    for (int i = 0; i < 16; i++)
                        s += (d * (float)(blk[i] & 15) + m) * xb[QK * k + i] +
                             (d * (float)(blk[i] >> 4) + m) * xb[QK * k + 16 + i];
                    dot[j] += s;
                }
            for (int j = 0; j < 4; j++) {
                float *out = y + (size_t)b * ldy + (r + j - y_first);
                *out = accumulate ? *out + dot[j] : dot[j];
            }
        }
    }
}

/* matvec on W4 when it holds the matrix (4-bit), else on the int8 W */
static inline void matvec_w(const Q4Mat *W4, const int8_t *W, const bf16 *scale, int K, const float *x,
                            const QRows *qx, int B, int r0, int r1, float *y, int ldy, int y_first, int accumulate) {
    if (r0 >= r1) return;
    if (!W4->qs) matvec(W, scale, K, x, qx, B, r0, r1, y, ldy, y_first, accumulate);
    else if (qx) gemv_q4(W4, K, qx, B, r0, r1, y, ldy, y_first, accumulate);
    else gemv4_f(W4, K, x, B, r0, r1, y, ldy, y_first, accumulate);
}

/* rows [rows, ...) of W4: the up half of the fused gate/up matrix */
static inline Q4Mat q4_from_row(const Q4Mat *W4, int rows, int K) {
    Q4Mat out = *W4;
    if (out.qs) {
        out.qs += (size_t)(rows / 4) * (K / QK) * 64;
        out.dm += (size_t)(rows / 4) * (K / QK) * 8;
    }
    return out;
}

/* y = x W^T for a Q4Mat of `rows` rows (rows % 4 == 0, K % 32 == 0) on one thread, for tests: int8
   activations unless dsa_set_int8_activations(0). Returns 0, or -2 for a bad shape. */
int dsa_q4_matvec(const uint8_t *qs, const uint16_t *dm, int rows, int K, const float *x, int B, float *y) {
    if (rows % 4 || K % QK || K <= 0 || B < 1) return -2;
    const Q4Mat W = {qs, dm};
    matvec_w(&W, NULL, NULL, K, x, quantize_for_thread(x, B, K), B, 0, rows, y, rows, 0, 0);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Threads. Not OpenMP: libgomp counts the threads of every team in the process (torch's included)
 * and, with more of them than cores, makes its barriers sleep after ~1000 spins; from the runner's
 * scheduler thread that made each step of ~180 barriers twice as slow on 2 threads as on one
 * (measured). A step here is one job for a small pool of our own: workers wait for the next step for a
 * while, then sleep on a condition variable. Every wait spins briefly, then yields the core
 * (sched_yield): the machine's cores are shared (other processes, the server's own threads), and a
 * thread that spins while the one it waits for is descheduled on the same core stalls the whole step
 * for a scheduler tick.                                                                              */

#define MAX_THREADS 64
#define IDLE_SPIN_NS 2000000L /* how long a worker waits (yielding) for the next step before it sleeps */
#define SPINS 64              /* pauses before a wait starts yielding */

typedef struct {
    _Atomic int count;
    _Atomic int sense;
} Barrier;

typedef struct Step Step;
static void step_body(Step *st, int tid, int nt);

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    _Atomic unsigned long generation; /* one per job */
    _Atomic int sleepers;
    _Atomic int done;                 /* workers through the current job */
    int workers;                      /* started so far */
    unsigned long start_generation;   /* the generation a worker created now waits past */
    Step *job;
    int nt;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0, NULL, 1};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#endif
}

/* one round of a wait: pause for the first SPINS rounds, then give the core to whoever needs it */
static inline void wait_round(int round) {
    if (round < SPINS) cpu_relax();
    else sched_yield();
}

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void *worker_main(void *arg) {
    const int tid = (int)(intptr_t)arg;
    /* not the current generation: the first job may be submitted before this thread runs */
    unsigned long seen = pool.start_generation;
    for (;;) {
        unsigned long g;
        long deadline = 0;
        for (int spins = 0; (g = atomic_load(&pool.generation)) == seen; spins++) {
            if (spins >= SPINS && (spins & 15) == 15) {
                long t = now_ns();
                if (!deadline) deadline = t + IDLE_SPIN_NS;
                else if (t > deadline) {
                    /* sleepers++ before re-reading the generation; the submitter bumps the generation
                       before reading sleepers: one of the two sees the other (sequentially consistent) */
                    pthread_mutex_lock(&pool.mu);
                    atomic_fetch_add(&pool.sleepers, 1);
                    while ((g = atomic_load(&pool.generation)) == seen) pthread_cond_wait(&pool.cv, &pool.mu);
                    atomic_fetch_sub(&pool.sleepers, 1);
                    pthread_mutex_unlock(&pool.mu);
                    break;
                }
            }
            wait_round(spins);
        }
        seen = g;
        if (tid < pool.nt) step_body(pool.job, tid, pool.nt);
        atomic_fetch_add(&pool.done, 1);
    }
    return NULL;
}

/* Runs step_body on nt threads (the caller is thread 0); returns when all are through. The pool is the
   process's: callers on several threads (two engines in one process) take turns. */
static pthread_mutex_t submit_mu = PTHREAD_MUTEX_INITIALIZER;

static void run_pooled(Step *st, int nt);

static int run_step(Step *st, int nt) {
    if (nt <= 1) {
        step_body(st, 0, 1);
        return 0;
    }
    pthread_mutex_lock(&submit_mu);
    run_pooled(st, nt);
    pthread_mutex_unlock(&submit_mu);
    return 0;
}

static void run_pooled(Step *st, int nt) {
    pool.start_generation = atomic_load(&pool.generation);
    while (pool.workers < nt - 1) {
        pthread_t th;
        if (pthread_create(&th, NULL, worker_main, (void *)(intptr_t)(pool.workers + 1)) != 0) break;
        pthread_detach(th);
        pool.workers++;
    }
    if (pool.workers < nt - 1) nt = pool.workers + 1;
    pool.job = st;
    pool.nt = nt;
    atomic_store(&pool.done, 0);
    atomic_fetch_add(&pool.generation, 1);
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.mu);
        pthread_cond_broadcast(&pool.cv);
        pthread_mutex_unlock(&pool.mu);
    }
    step_body(st, 0, nt);
    for (int i = 0; atomic_load(&pool.done) < pool.workers; i++) wait_round(i);
}

static void barrier_wait(Barrier *b, int nt, int *sense) {
    if (nt <= 1) return;
    const int s = !*sense;
    *sense = s;
    if (atomic_fetch_add(&b->count, 1) == nt - 1) {
        atomic_store(&b->count, 0);
        atomic_store(&b->sense, s);
    } else {
        for (int i = 0; atomic_load(&b->sense) != s; i++) wait_round(i);
    }
}

/* thread tid's share of rows [0, n), in multiples of 4 (the kernel's row block) */
static inline void share(int n, int tid, int nt, int *r0, int *r1) {
    int blocks = (n + 3) / 4;
    int per = blocks / nt, extra = blocks % nt;
    int b0 = tid * per + (tid < extra ? tid : extra);
    int b1 = b0 + per + (tid < extra ? 1 : 0);
    *r0 = b0 * 4 < n ? b0 * 4 : n;
    *r1 = b1 * 4 < n ? b1 * 4 : n;
}

/* thread tid's share of [0, n) items */
static inline void items(int n, int tid, int nt, int *i0, int *i1) {
    *i0 = (int)((long)n * tid / nt);
    *i1 = (int)((long)n * (tid + 1) / nt);
}

static void rms_norm(const float *h, const float *w, float eps, int n, float *out) {
    float ss = 0.f;
    for (int i = 0; i < n; i++) ss += h[i] * h[i];
    float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = 0; i < n; i++) out[i] = h[i] * inv * w[i];
}

/* rotate-half RoPE over the first 2*half dims of x, with tables of `half` (cos, sin) values */
static void rope(float *x, int half, const float *cos, const float *sin) {
    for (int j = 0; j < half; j++) {
        float x1 = x[j], x2 = x[j + half];
        x[j] = x1 * cos[j] - x2 * sin[j];
        x[j + half] = x2 * cos[j] + x1 * sin[j];
    }
}

static inline float silu(float g) { return g / (1.0f + expf(-g)); }

/* ---------------------------------------------------------------------------------------------- */
/* Attention and the DSA selection. The caches are bfloat16 rows of head_dim values; a block of keys is
 * read once for all the query heads of its key/value head (GQA), in chunks that the threads share, with
 * an online softmax per chunk (each chunk's max, sum and weighted values; the last chunk of a head
 * group to finish merges them). Dense attention walks positions 0..S-1 under the mask; sparse attention
 * walks the positions the indexer selected.                                                          */

#define MAX_GROUP 16   /* query heads per key/value head (native_decode checks) */
#define ATT_BLOCK 64   /* keys scored at once per chunk: the scores stay in L1 */
#define MIN_CHUNK 64   /* keys per work item at least */

#if defined(__AVX512F__)
typedef __m512 av;
#define AW 16
static inline av av_zero(void) { return _mm512_setzero_ps(); }
static inline av av_set1(float x) { return _mm512_set1_ps(x); }
static inline av av_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void av_store(float *p, av v) { _mm512_storeu_ps(p, v); }
static inline av av_bf16(const bf16 *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static inline av av_add(av a, av b) { return _mm512_add_ps(a, b); }
static inline av av_sub(av a, av b) { return _mm512_sub_ps(a, b); }
static inline av av_mul(av a, av b) { return _mm512_mul_ps(a, b); }
static inline av av_max(av a, av b) { return _mm512_max_ps(a, b); }
static inline av av_fma(av a, av b, av c) { return _mm512_fmadd_ps(a, b, c); }
static inline float av_sum(av v) { return _mm512_reduce_add_ps(v); }
static inline float av_hmax(av v) { return _mm512_reduce_max_ps(v); }
static inline av av_round(av v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline av av_pow2i(av n) { /* 2^n for integral n in [-126, 127] */
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}
static inline av av_zero_below(av y, av x, float lo) { /* y where x >= lo, else 0 */
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(lo), _CMP_GE_OQ), y);
}
#elif defined(__AVX2__) && defined(__FMA__)
typedef __m256 av;
#define AW 8
static inline av av_zero(void) { return _mm256_setzero_ps(); }
static inline av av_set1(float x) { return _mm256_set1_ps(x); }
static inline av av_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void av_store(float *p, av v) { _mm256_storeu_ps(p, v); }
static inline av av_bf16(const bf16 *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
static inline av av_add(av a, av b) { return _mm256_add_ps(a, b); }
static inline av av_sub(av a, av b) { return _mm256_sub_ps(a, b); }
static inline av av_mul(av a, av b) { return _mm256_mul_ps(a, b); }
static inline av av_max(av a, av b) { return _mm256_max_ps(a, b); }
static inline av av_fma(av a, av b, av c) { return _mm256_fmadd_ps(a, b, c); }
static inline float av_sum(av v) { return sum256(v); }
static inline float av_hmax(av v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline av av_round(av v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline av av_pow2i(av n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
static inline av av_zero_below(av y, av x, float lo) {
    return _mm256_and_ps(y, _mm256_cmp_ps(x, _mm256_set1_ps(lo), _CMP_GE_OQ));
}
#else
#define AW 0
#endif

#if AW
/* e^x for x <= 0 (arguments are score - running max), relative error ~2e-7; exactly 0 below -87
   (masked keys, -inf, included). Cody-Waite reduction and a degree-6 polynomial, as in Cephes' expf. */
static inline av av_exp(av x) {
    const av xc = av_max(x, av_set1(-87.0f));
    const av n = av_round(av_mul(xc, av_set1(1.44269504088896341f)));
    av r = av_fma(n, av_set1(-0.693359375f), xc);
    r = av_fma(n, av_set1(2.12194440e-4f), r);
    av p = av_set1(1.9875691500e-4f);
    p = av_fma(p, r, av_set1(1.3981999507e-3f));
    p = av_fma(p, r, av_set1(8.3334519073e-3f));
    p = av_fma(p, r, av_set1(4.1665795894e-2f));
    p = av_fma(p, r, av_set1(1.6666665459e-1f));
    p = av_fma(p, r, av_set1(5.0000001201e-1f));
    const av y = av_add(av_fma(av_mul(p, r), r, r), av_set1(1.0f));
    return av_zero_below(av_mul(y, av_pow2i(n)), x, -87.0f);
}
#endif

static inline float dot_f32_bf16(const float *q, const bf16 *k, int D) {
    int d = 0;
    float s = 0.f;
#if AW
    av acc0 = av_zero(), acc1 = av_zero();
    for (; d + 2 * AW <= D; d += 2 * AW) {
        acc0 = av_fma(av_load(q + d), av_bf16(k + d), acc0);
        acc1 = av_fma(av_load(q + d + AW), av_bf16(k + d + AW), acc1);
    }
    for (; d + AW <= D; d += AW) acc0 = av_fma(av_load(q + d), av_bf16(k + d), acc0);
    s = av_sum(av_add(acc0, acc1));
#endif
    for (; d < D; d++) s += q[d] * bf16_to_f32(k[d]);
    return s;
}

/* sc[i] = exp(sc[i] - mx) for i < n; returns their sum */
static inline float exp_shift_sum(float *sc, int n, float mx) {
    int i = 0;
    float sum = 0.f;
#if AW
    av acc = av_zero();
    const av m = av_set1(mx);
    for (; i + AW <= n; i += AW) {
        const av e = av_exp(av_sub(av_load(sc + i), m));
        av_store(sc + i, e);
        acc = av_add(acc, e);
    }
    sum = av_sum(acc);
#endif
    for (; i < n; i++) {
        sc[i] = sc[i] == -INFINITY ? 0.f : expf(sc[i] - mx);
        sum += sc[i];
    }
    return sum;
}

/* o[h] = o[h] * scale[h] + sum_j p[h][j] * V[pos_j] for the G heads of a group */
static void accumulate_values(float *o, const float *scale, const float *p, int G, int n, const bf16 *const *vrows,
                              int D) {
    for (int h = 0; h < G; h++)
        if (scale[h] != 1.f)
            for (int d = 0; d < D; d++) o[h * D + d] *= scale[h];
#if AW
    if (D % AW == 0 && D <= 8 * AW && G <= 4) { /* the usual shapes (D 64 or 128, G <= 4): o in registers */
        av acc[4][8];
        const int nv = D / AW;
        for (int h = 0; h < G; h++)
            for (int c = 0; c < nv; c++) acc[h][c] = av_load(o + h * D + c * AW);
        for (int j = 0; j < n; j++) {
            const bf16 *v = vrows[j];
            for (int c = 0; c < nv; c++) {
                const av vv = av_bf16(v + c * AW);
                for (int h = 0; h < G; h++) acc[h][c] = av_fma(av_set1(p[h * ATT_BLOCK + j]), vv, acc[h][c]);
            }
        }
        for (int h = 0; h < G; h++)
            for (int c = 0; c < nv; c++) av_store(o + h * D + c * AW, acc[h][c]);
        return;
    }
#endif
    float vrow[512];
    for (int j = 0; j < n; j++) {
        for (int d = 0; d < D; d++) vrow[d] = bf16_to_f32(vrows[j][d]);
        for (int h = 0; h < G; h++) {
            const float w = p[h * ATT_BLOCK + j];
            if (w != 0.f)
                for (int d = 0; d < D; d++) o[h * D + d] += w * vrow[d];
        }
    }
}

/* One chunk of attention for the G query heads q (G x D, already rotated) over keys at cache positions
   list[i0..i1) (list NULL: positions i0..i1 under mask mk): writes the chunk's running max m[G], sum l[G]
   and unnormalised output o[G][D]. */
static void attend_chunk(const float *q, int G, int D, float scaling, const bf16 *K, int64_t k_pos, const bf16 *V,
                         int64_t v_pos, const int32_t *list, const int64_t *mk, int i0, int i1,
                         float *m, float *l, float *o) {
    float sc[MAX_GROUP * ATT_BLOCK];
    const bf16 *krows[ATT_BLOCK], *vrows[ATT_BLOCK];
    float scale[MAX_GROUP];
    for (int h = 0; h < G; h++) {
        m[h] = -INFINITY;
        l[h] = 0.f;
    }
    memset(o, 0, sizeof(float) * G * D);
    for (int b0 = i0; b0 < i1; b0 += ATT_BLOCK) {
        const int n = i1 - b0 < ATT_BLOCK ? i1 - b0 : ATT_BLOCK;
        int visible = 0;
        for (int j = 0; j < n; j++) {
            const int64_t pos = list ? list[b0 + j] : b0 + j;
            krows[j] = K + pos * k_pos;
            vrows[j] = V + pos * v_pos;
            const int ok = list || mk[pos];
            visible += ok;
            for (int h = 0; h < G; h++) sc[h * ATT_BLOCK + j] = ok ? 0.f : -INFINITY;
        }
        if (!visible) continue;
        for (int j = 0; j < n; j++) {
            if (!list && !mk[b0 + j]) continue; /* stays -inf: weight 0 */
            if (j + 2 < n) __builtin_prefetch(krows[j + 2], 0, 3);
            for (int h = 0; h < G; h++) sc[h * ATT_BLOCK + j] = dot_f32_bf16(q + h * D, krows[j], D) * scaling;
        }
        for (int h = 0; h < G; h++) {
            float *s = sc + h * ATT_BLOCK;
            float bm = -INFINITY;
            for (int j = 0; j < n; j++) bm = s[j] > bm ? s[j] : bm;
            const float nm = bm > m[h] ? bm : m[h];
            if (nm == -INFINITY) { /* nothing visible for this head yet */
                scale[h] = 1.f;
                for (int j = 0; j < n; j++) s[j] = 0.f;
                continue;
            }
            scale[h] = m[h] == -INFINITY || nm == m[h] ? 1.f : expf(m[h] - nm); /* o, l still 0 at -inf */
            m[h] = nm;
            l[h] = l[h] * scale[h] + exp_shift_sum(s, n, nm);
        }
        accumulate_values(o, scale, sc, G, n, vrows, D);
    }
}

/* Merges the chunks' (m, l, o) of one head group into the normalised output out[G][D] */
static void merge_chunks(const float *part, int nchunks, int G, int D, float *out, int64_t out_head_stride) {
    const int per = G * (D + 2);
    for (int h = 0; h < G; h++) {
        float M = -INFINITY;
        for (int c = 0; c < nchunks; c++) {
            const float mc = part[c * per + h];
            M = mc > M ? mc : M;
        }
        float L = 0.f;
        float *dst = out + h * out_head_stride;
        for (int d = 0; d < D; d++) dst[d] = 0.f;
        for (int c = 0; c < nchunks; c++) {
            const float *pc = part + c * per;
            if (pc[h] == -INFINITY || pc[G + h] == 0.f) continue;
            const float w = expf(pc[h] - M);
            L += pc[G + h] * w;
            const float *oc = pc + 2 * G + h * D;
            for (int d = 0; d < D; d++) dst[d] += w * oc[d];
        }
        const float inv = L > 0.f ? 1.0f / L : 0.f;
        for (int d = 0; d < D; d++) dst[d] *= inv;
    }
}

/* Index scores of one query (H_I heads of dI dims, weights w) against the cached index keys at positions
   [s0, s1): I(s) = sum_j w_j * ReLU(q_j . k_s), -inf where the mask hides the key. */
static void index_scores_range(const float *qI, const float *w, int HI, int dI, const bf16 *KI, int64_t k_pos,
                               const int64_t *mk, int s0, int s1, float *out) {
    for (int s = s0; s < s1; s++) {
        if (!mk[s]) {
            out[s] = -INFINITY;
            continue;
        }
        const bf16 *k = KI + (int64_t)s * k_pos;
        if (s + 4 < s1) __builtin_prefetch(KI + (int64_t)(s + 4) * k_pos, 0, 3);
        float score = 0.f;
        for (int j = 0; j < HI; j++) {
            const float dot = dot_f32_bf16(qI + j * dI, k, dI);
            score += w[j] * (dot > 0.f ? dot : 0.f);
        }
        out[s] = score;
    }
}

/* A float's bits as an unsigned integer of the same order (-0.0 as +0.0) */
static inline uint32_t order_key(float f) {
    uint32_t u;
    f += 0.0f;
    memcpy(&u, &f, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* The positions of the k highest scores among scores[0..S) that are not -inf, ties at the boundary going to
   the most recent positions (kernels.select_top_k's stable rule); returns how many (min(k, finite ones)).
   Radix selection on the ordered bits, 11 + 11 + 10 bits: each pass keeps the bucket of the k-th key.
   tmp: 2 * S ints of scratch. */
int dsa_select_top_k(const float *scores, int S, int k, int32_t *out, int32_t *tmp) {
    int n = 0, found = 0;
    int32_t *cand = tmp, *next = tmp + S;
    for (int s = 0; s < S; s++)
        if (scores[s] != -INFINITY) cand[n++] = s;
    if (n <= k) {
        memcpy(out, cand, sizeof(int32_t) * n);
        return n;
    }
    int need = k;
    const int shifts[3] = {21, 10, 0}, widths[3] = {11, 11, 10};
    for (int pass = 0; pass < 3 && need > 0; pass++) {
        int hist[2048];
        const int bins = 1 << widths[pass], sh = shifts[pass];
        const uint32_t mask = (uint32_t)bins - 1;
        memset(hist, 0, sizeof(int) * bins);
        for (int i = 0; i < n; i++) hist[(order_key(scores[cand[i]]) >> sh) & mask]++;
        int t = bins - 1, above = 0;
        while (above + hist[t] < need) above += hist[t--];
        /* bins above t are selected; bin t holds the k-th key and goes on to the next pass */
        int m = 0;
        for (int i = 0; i < n; i++) {
            const int bin = (int)((order_key(scores[cand[i]]) >> sh) & mask);
            if (bin > t) out[found++] = cand[i];
            else if (bin == t) next[m++] = cand[i];
        }
        need -= above;
        int32_t *swap = cand;
        cand = next;
        next = swap;
        n = m;
        if (n == need) break;
    }
    /* every candidate left has the same score (or exactly need remain): the most recent ones */
    for (int i = n - need; i < n; i++) out[found++] = cand[i];
    return found;
}

struct Step {
    const Model *m;
    int B, S, top_k; /* top_k 0: dense attention */
    int proj_n;      /* columns of the fused projection: q, k, v, index key */
    int iq_n;        /* columns of the index-query projection: H_I * dI queries, H_I weights (sparse steps) */
    int nchunks, chunk; /* attention work items per (row, key/value head), keys per item */
    const int64_t *tokens, *positions, *mask;
    const CacheView *kv, *ik;
    float *logits;
    float *h, *x, *proj, *iproj, *attn, *act, *part, *iscores;
    int32_t *sel, *nsel, *sel_tmp; /* sparse: selected positions (B x top_k), how many, scratch */
    _Atomic int *merged;           /* chunks done per (layer, row, kv head): the last one merges */
    Barrier barrier;
};

/* Rotates the query heads of kv head g (g < Hkv) and stores its new key and value in the caches; g == Hkv:
   the new index key (LayerNorm, rotary) and, in a sparse step, the rotated index queries and scaled weights */
static void store_new_keys(Step *st, const Layer *L, int l, int b, int g) {
    const Model *m = st->m;
    const int D = m->head_dim, qn = m->n_heads * D, kvn = m->n_kv * D, dI = m->index_dim;
    const int G = m->n_heads / m->n_kv;
    const int pos_w = st->S - 1;
    float *p = st->proj + (size_t)b * st->proj_n;
    const int64_t pos = st->positions[b];
    if (g < m->n_kv) {
        const CacheView *c = &st->kv[l];
        for (int hh = g * G; hh < (g + 1) * G; hh++) rope(p + hh * D, D / 2, m->cos + pos * D, m->sin + pos * D);
        float *k = p + qn + g * D, *v = p + qn + kvn + g * D;
        rope(k, D / 2, m->cos + pos * D, m->sin + pos * D);
        bf16 *kd = c->k + b * c->k_row + g * c->k_head + (int64_t)pos_w * c->k_pos;
        bf16 *vd = c->v + b * c->v_row + g * c->v_head + (int64_t)pos_w * c->v_pos;
        for (int d = 0; d < D; d++) {
            kd[d] = f32_to_bf16(k[d]);
            vd[d] = f32_to_bf16(v[d]);
        }
    } else if (dI > 0) {
        float *ki = p + qn + 2 * kvn;
        float mean = 0.f, var = 0.f;
        for (int d = 0; d < dI; d++) mean += ki[d];
        mean /= (float)dI;
        for (int d = 0; d < dI; d++) var += (ki[d] - mean) * (ki[d] - mean);
        const float inv = 1.0f / sqrtf(var / (float)dI + L->knorm_eps);
        for (int d = 0; d < dI; d++) ki[d] = (ki[d] - mean) * inv * L->knorm_w[d] + L->knorm_b[d];
        const int half = m->index_rope_dim / 2;
        if (half > 0) rope(ki, half, m->icos + pos * half, m->isin + pos * half);
        const CacheView *c = &st->ik[l];
        bf16 *kd = c->k + b * c->k_row + (int64_t)pos_w * c->k_pos;
        for (int d = 0; d < dI; d++) kd[d] = f32_to_bf16(ki[d]);
        if (st->top_k > 0) {
            float *iq = st->iproj + (size_t)b * st->iq_n;
            for (int j = 0; j < m->index_heads; j++)
                if (half > 0) rope(iq + j * dI, half, m->icos + pos * half, m->isin + pos * half);
            for (int j = 0; j < m->index_heads; j++) iq[m->index_heads * dI + j] *= m->index_w_scale;
        }
    }
}

/* Work item i of the attention: chunk c of kv head g of row b; the last chunk of (b, g) to finish merges */
static void attend_item(Step *st, int l, int i) {
    const Model *m = st->m;
    const int D = m->head_dim, H = m->n_heads, Hkv = m->n_kv, G = H / Hkv, qn = H * D;
    const int c = i % st->nchunks, bg = i / st->nchunks, b = bg / Hkv, g = bg % Hkv;
    const CacheView *cv = &st->kv[l];
    const int32_t *list = st->top_k > 0 ? st->sel + (size_t)b * st->top_k : NULL;
    const int n = list ? st->nsel[b] : st->S;
    const int i0 = c * st->chunk < n ? c * st->chunk : n;
    const int i1 = i0 + st->chunk < n ? i0 + st->chunk : n;
    const int per = G * (D + 2);
    float *part = st->part + (size_t)i * per;
    attend_chunk(st->proj + (size_t)b * st->proj_n + g * G * D, G, D, m->scaling,
                 cv->k + b * cv->k_row + g * cv->k_head, cv->k_pos, cv->v + b * cv->v_row + g * cv->v_head, cv->v_pos,
                 list, st->mask + (size_t)b * st->S, i0, i1, part, part + G, part + 2 * G);
    _Atomic int *done = &st->merged[((size_t)l * st->B + b) * Hkv + g];
    if (atomic_fetch_add(done, 1) == st->nchunks - 1) /* acq_rel: the other chunks' writes are visible */
        merge_chunks(st->part + (size_t)bg * st->nchunks * per, st->nchunks, G, D,
                     st->attn + (size_t)b * qn + g * G * D, D);
}

/* x = rms(h) * w for every row of the batch (thread 0; the caller's barrier publishes x) */
static void norm_rows(Step *st, int tid, const float *w, float eps) {
    const int Hd = st->m->hidden;
    if (tid == 0)
        for (int b = 0; b < st->B; b++) rms_norm(st->h + b * Hd, w, eps, Hd, st->x + b * Hd);
}

static void step_body(Step *st, int tid, int nt) {
    const Model *m = st->m;
    const int B = st->B, Hd = m->hidden, H = m->n_heads, Hkv = m->n_kv, D = m->head_dim, I = m->inter;
    const int qn = H * D, proj_n = st->proj_n, S = st->S, sparse = st->top_k > 0;
    const int dI = m->index_dim, HI = m->index_heads;
    float *h = st->h, *x = st->x;
    int sense = 0, r0, r1, i0, i1;
#define SYNC() barrier_wait(&st->barrier, nt, &sense)
    for (int l = 0; l < m->n_layers; l++) {
        const Layer *L = &m->layers[l];
        norm_rows(st, tid, L->ln1, L->eps1);
        SYNC();
        /* the fused projection and, in a sparse step, the index queries: one share of their rows together,
           on one quantised copy of x */
        share(proj_n + (sparse ? st->iq_n : 0), tid, nt, &r0, &r1);
        const QRows *qx_proj = quantize_for_thread(x, B, Hd);
        if (r0 < proj_n) {
            const int e = r1 < proj_n ? r1 : proj_n, n4 = L->qkv4.qs ? L->qkv4_rows : 0;
            matvec_w(&L->qkv4, L->qkv, L->qkv_scale, Hd, x, qx_proj, B, r0, e < n4 ? e : n4, st->proj, proj_n, 0, 0);
            matvec(L->qkv, L->qkv_scale, Hd, x, qx_proj, B, r0 > n4 ? r0 : n4, e, st->proj, proj_n, 0, 0);
        }
        if (sparse && r1 > proj_n) {
            const int a = (r0 > proj_n ? r0 : proj_n) - proj_n, e = r1 - proj_n;
            matvec(L->iqw, L->iqw_scale, Hd, x, qx_proj, B, a, e, st->iproj, st->iq_n, 0, 0);
        }
        SYNC();
        items(B * (Hkv + 1), tid, nt, &i0, &i1);
        for (int i = i0; i < i1; i++) store_new_keys(st, L, l, i / (Hkv + 1), i % (Hkv + 1));
        SYNC();
        if (sparse) {
            /* index scores over every cached index key, in chunks the threads share; then each row's top-k */
            const int per_row = (S + MIN_CHUNK * 4 - 1) / (MIN_CHUNK * 4);
            items(B * per_row, tid, nt, &i0, &i1);
            for (int i = i0; i < i1; i++) {
                const int b = i / per_row, c = i % per_row, step = (S + per_row - 1) / per_row;
                const int s0 = c * step < S ? c * step : S, s1 = s0 + step < S ? s0 + step : S;
                const CacheView *ik = &st->ik[l];
                const float *iq = st->iproj + (size_t)b * st->iq_n;
                index_scores_range(iq, iq + HI * dI, HI, dI, ik->k + b * ik->k_row, ik->k_pos,
                                   st->mask + (size_t)b * S, s0, s1, st->iscores + (size_t)b * S);
            }
            SYNC();
            items(B, tid, nt, &i0, &i1);
            for (int b = i0; b < i1; b++)
                st->nsel[b] = dsa_select_top_k(st->iscores + (size_t)b * S, S, st->top_k,
                                               st->sel + (size_t)b * st->top_k, st->sel_tmp + (size_t)b * 2 * S);
            SYNC();
        }
        items(B * Hkv * st->nchunks, tid, nt, &i0, &i1);
        for (int i = i0; i < i1; i++) attend_item(st, l, i);
        SYNC();
        share(Hd, tid, nt, &r0, &r1);
        matvec_w(&L->o4, L->o, L->o_scale, qn, st->attn, quantize_for_thread(st->attn, B, qn), B, r0, r1, h, Hd, 0, 1);
        SYNC();
        norm_rows(st, tid, L->ln2, L->eps2);
        SYNC();
        /* gate and up rows i and I + i on the same thread: silu(g) * u without a barrier */
        share(I, tid, nt, &r0, &r1);
        const QRows *qx = quantize_for_thread(x, B, Hd);
        const Q4Mat up4 = q4_from_row(&L->gu4, I, Hd);
        for (int i = r0; i < r1; i += 4) {
            const int e = i + 4 < r1 ? i + 4 : r1;
            float gate[MAX_ROWS * 4], up[MAX_ROWS * 4];
            matvec_w(&L->gu4, L->gu, L->gu_scale, Hd, x, qx, B, i, e, gate, 4, i, 0);
            matvec_w(&up4, L->gu + (size_t)I * Hd, L->gu_scale + I, Hd, x, qx, B, i, e, up, 4, i, 0);
            for (int b = 0; b < B; b++)
                for (int j = i; j < e; j++) st->act[(size_t)b * I + j] = silu(gate[b * 4 + j - i]) * up[b * 4 + j - i];
        }
        SYNC();
        share(Hd, tid, nt, &r0, &r1);
        matvec_w(&L->down4, L->down, L->down_scale, I, st->act, quantize_for_thread(st->act, B, I), B, r0, r1, h, Hd, 0,
                 1);
        SYNC();
    }
    norm_rows(st, tid, m->final_norm, m->final_eps);
    SYNC();
    share(m->vocab, tid, nt, &r0, &r1);
    matvec(m->head, m->head_scale, Hd, x, quantize_for_thread(x, B, Hd), B, r0, r1, st->logits, m->vocab, 0, 0);
#undef SYNC
}

int dsa_max_rows(void) { return MAX_ROWS; }

/* Returns 0; -1 when a position is past the rotary tables, -2 for a bad batch, -3 out of memory (the
   caller falls back; nothing was written). top_k > 0: a sparse DSA step (each row attends to the top_k
   keys of its index scores), 0: dense attention. */
int dsa_decode_step(const Model *m, int B, const int64_t *tokens, const int64_t *positions,
                    const int64_t *mask, int S, const CacheView *kv, const CacheView *ik,
                    float *logits, int nthreads, int top_k) {
    if (B < 1 || B > MAX_ROWS) return -2;
    if (m->n_heads / m->n_kv > MAX_GROUP || m->head_dim > 512) return -2;
    if (top_k > 0 && (m->index_dim <= 0 || !m->index_heads || top_k >= S)) top_k = 0; /* selection = all keys */
    for (int b = 0; b < B; b++)
        if (positions[b] < 0 || positions[b] >= m->max_pos) return -1;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    if (nthreads < 1) nthreads = 1;
    const int Hd = m->hidden, I = m->inter, qn = m->n_heads * m->head_dim, Hkv = m->n_kv;
    const int G = m->n_heads / Hkv, D = m->head_dim;
    const int proj_n = qn + 2 * Hkv * D + m->index_dim;
    const int iq_n = top_k > 0 ? m->index_heads * (m->index_dim + 1) : 0;
    /* attention items: enough per (row, kv head) for every thread to have ~4, of MIN_CHUNK keys at least */
    const int keys = top_k > 0 ? top_k : S;
    const int want = (4 * nthreads + B * Hkv - 1) / (B * Hkv), most = (keys + MIN_CHUNK - 1) / MIN_CHUNK;
    const int nchunks = want < most ? want : (most > 0 ? most : 1);
    Step st;
    memset(&st, 0, sizeof st);
    st.m = m; st.B = B; st.S = S; st.top_k = top_k; st.proj_n = proj_n; st.iq_n = iq_n;
    st.nchunks = nchunks; st.chunk = (keys + nchunks - 1) / nchunks;
    st.tokens = tokens; st.positions = positions; st.mask = mask; st.kv = kv; st.ik = ik; st.logits = logits;
    st.h = malloc(sizeof(float) * B * Hd);
    st.x = malloc(sizeof(float) * B * Hd);
    st.proj = malloc(sizeof(float) * B * proj_n);
    st.iproj = malloc(sizeof(float) * (B * iq_n + 1));
    st.attn = malloc(sizeof(float) * B * qn);
    st.act = malloc(sizeof(float) * B * I);
    st.part = malloc(sizeof(float) * (size_t)B * Hkv * nchunks * G * (D + 2));
    st.merged = calloc((size_t)m->n_layers * B * Hkv, sizeof(_Atomic int));
    const size_t sparse_n = top_k > 0 ? (size_t)B : 0;
    st.iscores = malloc(sizeof(float) * (sparse_n * S + 1));
    st.sel = malloc(sizeof(int32_t) * (sparse_n * top_k + 1));
    st.nsel = malloc(sizeof(int32_t) * (sparse_n + 1));
    st.sel_tmp = malloc(sizeof(int32_t) * (sparse_n * 2 * S + 1));
    int rc = -3;
    if (st.h && st.x && st.proj && st.iproj && st.attn && st.act && st.part && st.merged && st.iscores && st.sel &&
        st.nsel && st.sel_tmp) {
        for (int b = 0; b < B; b++) {
            const bf16 *e = m->embed + (size_t)tokens[b] * Hd;
            for (int i = 0; i < Hd; i++) st.h[b * Hd + i] = bf16_to_f32(e[i]);
        }
        rc = run_step(&st, nthreads);
    }
    free(st.h); free(st.x); free(st.proj); free(st.iproj); free(st.attn); free(st.act); free(st.part);
    free((void *)st.merged); free(st.iscores); free(st.sel); free(st.nsel); free(st.sel_tmp);
    return rc;
}
