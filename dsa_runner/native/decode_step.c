/* One decode step of a Llama-family model for a few rows (batch <= 4), int8 weight-only, on the CPU.
 *
 * Why C: at batch 1 a 135M model is bound by reading its int8 weights once per token (~135 MB). The
 * torch path spends about half of each step in the dispatcher and in small ops between the matmuls, and
 * aten's int8 kernel reads the weights at well under the memory bandwidth. Here the whole step (all
 * layers, the LM head) is one job for a few threads: the matrix-vector products split their output rows
 * over the threads, everything else runs between barriers, and activations stay in float32.
 *
 * The maths is the one of dsa_runner/fast_decode.py (dense attention, S <= top_k, or no DSA):
 *   h = embed[token]
 *   per layer: x = rms(h) * ln1;  [q | k | v | k_I] = x W_qkv;  rotary(q, k);  k, v -> cache
 *              k_I -> LayerNorm -> rotary on its first rope dims -> index-key cache      (DSA only)
 *              o = softmax(q K^T * scaling, masked) V;   h += o W_o
 *              x = rms(h) * ln2;  h += (silu(x W_gate) * (x W_up)) W_down
 *   logits = rms(h) * norm  W_head
 * Weights: int8, one bfloat16 scale per output row. Norm weights float32. Embedding, caches bfloat16.
 * Built by dsa_runner/native_decode.py with the machine's compiler (-O3 -march=native -pthread).
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
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

typedef struct {
    const float *ln1, *ln2;
    float eps1, eps2;
    const int8_t *qkv; const bf16 *qkv_scale; /* rows: q (H*D), k (Hkv*D), v (Hkv*D), k_I (dI, DSA) */
    const int8_t *o; const bf16 *o_scale;     /* (hidden, H*D) */
    const int8_t *gu; const bf16 *gu_scale;   /* (2*inter, hidden): gate rows then up rows */
    const int8_t *down; const bf16 *down_scale; /* (hidden, inter) */
    const float *knorm_w, *knorm_b;           /* index-key LayerNorm (DSA only) */
    float knorm_eps;
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
} Model;

typedef struct {       /* one cache layer: element offsets of batch row, head, position */
    bf16 *k, *v;
    int64_t k_row, k_head, k_pos, v_row, v_head, v_pos;
} CacheView;

/* ---------------------------------------------------------------------------------------------- */
/* y[b, r] (+)= scale[r] * <x[b, :K], W[r, :K]> for r in [r0, r1), b < B                            */
/* The dot products of four weight rows at once, against up to GROUP input rows (16 accumulators). */

#define GROUP 4

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
static inline float hsum(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
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
static inline float qhsum(qf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
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

static void quantize_rows(const float *x, int B, int K, int8_t *q, float *d, float *lane) {
    for (int b = 0; b < B; b++) {
        for (int c = 0; c < K; c += QK) {
            float scale;
            quantize_block(x + (size_t)b * K + c, q + (size_t)b * K + c, &scale);
            d[(size_t)b * (K / QK) + c / QK] = scale;
            for (int i = 0; i < QK / 4; i++) lane[((size_t)b * K + c) / 4 + i] = scale;
        }
    }
}

/* the calling thread's quantised copy of x; NULL when K is not whole blocks or memory runs out */
static const QRows *quantize_for_thread(const float *x, int B, int K) {
    static __thread struct { int8_t *q; float *d, *lane; size_t cap; QRows rows; } buf;
    if (!int8_activations || K % QK) return NULL;
    const size_t n = (size_t)B * K;
    if (n > buf.cap) {
        free(buf.q); free(buf.d); free(buf.lane);
        buf.q = malloc(n);
        buf.d = malloc(sizeof(float) * (n / QK));
        buf.lane = malloc(sizeof(float) * (n / 4));
        buf.cap = buf.q && buf.d && buf.lane ? n : 0;
        if (!buf.cap) return NULL;
    }
    quantize_rows(x, B, K, buf.q, buf.d, buf.lane);
    buf.rows.q = buf.q; buf.rows.d = buf.d; buf.rows.lane = buf.lane;
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
/* Threads. Not OpenMP: libgomp counts the threads of every team in the process (torch's included)
 * and, with more of them than cores, makes its barriers sleep after ~1000 spins; from the runner's
 * scheduler thread that made each step of ~180 barriers twice as slow on 2 threads as on one
 * (measured). A step here is one job for a small pool of our own: workers spin between steps for a
 * while, then sleep on a condition variable; the barriers inside a step only spin.                   */

#define MAX_THREADS 64
#define IDLE_SPIN_NS 2000000L /* how long a worker spins for the next step before it sleeps */

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
            if ((spins & 1023) == 1023) {
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
            cpu_relax();
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
    while (atomic_load(&pool.done) < pool.workers) cpu_relax();
}

static void barrier_wait(Barrier *b, int nt, int *sense) {
    if (nt <= 1) return;
    const int s = !*sense;
    *sense = s;
    if (atomic_fetch_add(&b->count, 1) == nt - 1) {
        atomic_store(&b->count, 0);
        atomic_store(&b->sense, s);
    } else {
        while (atomic_load(&b->sense) != s) cpu_relax();
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

struct Step {
    const Model *m;
    int B, S;
    int proj_n; /* columns of the fused projection: q, k, v, index key */
    const int64_t *tokens, *positions, *mask;
    const CacheView *kv, *ik;
    float *logits;
    float *h, *x, *proj, *attn, *act, *scores;
    Barrier barrier;
};

/* the new token's key, value (kv head g < Hkv) or index key (g == Hkv) of row b -> the caches */
static void store_new_keys(Step *st, const Layer *L, int l, int b, int g) {
    const Model *m = st->m;
    const int D = m->head_dim, qn = m->n_heads * D, kvn = m->n_kv * D, dI = m->index_dim;
    const int pos_w = st->S - 1;
    float *p = st->proj + (size_t)b * st->proj_n;
    const int64_t pos = st->positions[b];
    if (g < m->n_kv) {
        const CacheView *c = &st->kv[l];
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
    }
}

/* softmax(q K^T * scaling, masked) V for query head hh of row b */
static void attend(Step *st, int l, int b, int hh) {
    const Model *m = st->m;
    const int D = m->head_dim, H = m->n_heads, qn = H * D, S = st->S;
    const CacheView *c = &st->kv[l];
    const int64_t pos = st->positions[b];
    float q[512];
    memcpy(q, st->proj + (size_t)b * st->proj_n + hh * D, sizeof(float) * D);
    rope(q, D / 2, m->cos + pos * D, m->sin + pos * D);
    const int g = hh / (H / m->n_kv);
    const bf16 *K = c->k + b * c->k_row + g * c->k_head;
    const bf16 *V = c->v + b * c->v_row + g * c->v_head;
    const int64_t *mk = st->mask + (size_t)b * S;
    float *sc = st->scores + ((size_t)b * H + hh) * S;
    float mx = -INFINITY;
    for (int s = 0; s < S; s++) {
        if (!mk[s]) continue;
        const bf16 *kr = K + (int64_t)s * c->k_pos;
        float dot = 0.f;
        for (int d = 0; d < D; d++) dot += q[d] * bf16_to_f32(kr[d]);
        sc[s] = dot * m->scaling;
        if (sc[s] > mx) mx = sc[s];
    }
    float sum = 0.f;
    for (int s = 0; s < S; s++) {
        sc[s] = mk[s] ? expf(sc[s] - mx) : 0.f;
        sum += sc[s];
    }
    float *o = st->attn + (size_t)b * qn + hh * D;
    for (int d = 0; d < D; d++) o[d] = 0.f;
    for (int s = 0; s < S; s++) {
        if (sc[s] == 0.f) continue;
        const float w = sc[s] / sum;
        const bf16 *vr = V + (int64_t)s * c->v_pos;
        for (int d = 0; d < D; d++) o[d] += w * bf16_to_f32(vr[d]);
    }
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
    const int qn = H * D, proj_n = st->proj_n;
    float *h = st->h, *x = st->x;
    int sense = 0, r0, r1, i0, i1;
#define SYNC() barrier_wait(&st->barrier, nt, &sense)
    for (int l = 0; l < m->n_layers; l++) {
        const Layer *L = &m->layers[l];
        norm_rows(st, tid, L->ln1, L->eps1);
        SYNC();
        share(proj_n, tid, nt, &r0, &r1);
        matvec(L->qkv, L->qkv_scale, Hd, x, quantize_for_thread(x, B, Hd), B, r0, r1, st->proj, proj_n, 0, 0);
        SYNC();
        items(B * (Hkv + 1), tid, nt, &i0, &i1);
        for (int i = i0; i < i1; i++) store_new_keys(st, L, l, i / (Hkv + 1), i % (Hkv + 1));
        SYNC();
        items(B * H, tid, nt, &i0, &i1);
        for (int i = i0; i < i1; i++) attend(st, l, i / H, i % H);
        SYNC();
        share(Hd, tid, nt, &r0, &r1);
        matvec(L->o, L->o_scale, qn, st->attn, quantize_for_thread(st->attn, B, qn), B, r0, r1, h, Hd, 0, 1);
        SYNC();
        norm_rows(st, tid, L->ln2, L->eps2);
        SYNC();
        /* gate and up rows i and I + i on the same thread: silu(g) * u without a barrier */
        share(I, tid, nt, &r0, &r1);
        const QRows *qx = quantize_for_thread(x, B, Hd);
        for (int i = r0; i < r1; i += 4) {
            const int e = i + 4 < r1 ? i + 4 : r1;
            float gate[MAX_ROWS * 4], up[MAX_ROWS * 4];
            matvec(L->gu, L->gu_scale, Hd, x, qx, B, i, e, gate, 4, i, 0);
            matvec(L->gu + (size_t)I * Hd, L->gu_scale + I, Hd, x, qx, B, i, e, up, 4, i, 0);
            for (int b = 0; b < B; b++)
                for (int j = i; j < e; j++) st->act[(size_t)b * I + j] = silu(gate[b * 4 + j - i]) * up[b * 4 + j - i];
        }
        SYNC();
        share(Hd, tid, nt, &r0, &r1);
        matvec(L->down, L->down_scale, I, st->act, quantize_for_thread(st->act, B, I), B, r0, r1, h, Hd, 0, 1);
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
   caller falls back; nothing was written). */
int dsa_decode_step(const Model *m, int B, const int64_t *tokens, const int64_t *positions,
                    const int64_t *mask, int S, const CacheView *kv, const CacheView *ik,
                    float *logits, int nthreads) {
    if (B < 1 || B > MAX_ROWS) return -2;
    for (int b = 0; b < B; b++)
        if (positions[b] < 0 || positions[b] >= m->max_pos) return -1;
    const int Hd = m->hidden, I = m->inter, qn = m->n_heads * m->head_dim;
    const int proj_n = qn + 2 * m->n_kv * m->head_dim + m->index_dim;
    Step st = {m, B, S, proj_n, tokens, positions, mask, kv, ik, logits,
               NULL, NULL, NULL, NULL, NULL, NULL, {0, 0}};
    st.h = malloc(sizeof(float) * B * Hd);
    st.x = malloc(sizeof(float) * B * Hd);
    st.proj = malloc(sizeof(float) * B * proj_n);
    st.attn = malloc(sizeof(float) * B * qn);
    st.act = malloc(sizeof(float) * B * I);
    st.scores = malloc(sizeof(float) * (size_t)B * m->n_heads * S);
    int rc = -3;
    if (st.h && st.x && st.proj && st.attn && st.act && st.scores) {
        for (int b = 0; b < B; b++) {
            const bf16 *e = m->embed + (size_t)tokens[b] * Hd;
            for (int i = 0; i < Hd; i++) st.h[b * Hd + i] = bf16_to_f32(e[i]);
        }
        if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
        rc = run_step(&st, nthreads < 1 ? 1 : nthreads);
    }
    free(st.h); free(st.x); free(st.proj); free(st.attn); free(st.act); free(st.scores);
    return rc;
}
