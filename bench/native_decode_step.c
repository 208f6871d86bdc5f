/* The C decode step alone (dsa_runner/native/decode_step.c), timed without Python or torch: random int8
 * weights and bfloat16 caches of SmolLM2-135M's shapes (30 layers, 9 query / 3 key-value heads of 64, DSA
 * index keys of 32 with 4 index heads), batch 1, contexts 200 to 6,000 tokens, dense and sparse (top-k 2048).
 * Reports wall and process CPU time per step (median and best of 15): on a shared machine the CPU time is
 * the steadier figure. Another version of the step (e.g. main's) builds with -DDECODE_SRC='"path"'; one
 * without sparse steps (before DSA's C path) with -DOLD as well.
 *
 *   cc -O3 -march=native -pthread -std=gnu11 -o /tmp/decode_bench bench/native_decode_step.c -lm
 *   /tmp/decode_bench 2        # threads
 */
#ifndef DECODE_SRC
#define DECODE_SRC "../dsa_runner/native/decode_step.c"
#endif
#include DECODE_SRC
#include <stdio.h>
static uint32_t rng = 12345;
static inline uint32_t rnd(void) { rng = rng * 1664525u + 1013904223u; return rng >> 8; }
static float frand(void) { return (float)(rnd() & 0xffff) / 65536.f - 0.5f; }
static int8_t *i8(size_t n) { int8_t *p = malloc(n); for (size_t i = 0; i < n; i++) p[i] = (int8_t)(rnd() % 255 - 127); return p; }
static bf16 *b16(size_t n, float scale) { bf16 *p = malloc(2 * n); for (size_t i = 0; i < n; i++) p[i] = f32_to_bf16(frand() * scale); return p; }
static float *f32c(size_t n, float v) { float *p = malloc(4 * n); for (size_t i = 0; i < n; i++) p[i] = v; return p; }
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static double cpu(void) { struct timespec t; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static int cmpd(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }
int main(int argc, char **argv) {
    const int NL = 30, Hd = 576, H = 9, Hkv = 3, D = 64, I = 1536, V = 49152, dI = 32, HI = 4, MP = 8192, RD = 16;
    const int nt = argc > 1 ? atoi(argv[1]) : 2;
    Layer *L = calloc(NL, sizeof(Layer));
    for (int l = 0; l < NL; l++) {
        int pn = H * D + 2 * Hkv * D + dI;
        L[l].ln1 = f32c(Hd, 1.f); L[l].ln2 = f32c(Hd, 1.f); L[l].eps1 = L[l].eps2 = 1e-5f;
        L[l].qkv = i8((size_t)pn * Hd); L[l].qkv_scale = b16(pn, 0.002f);
        L[l].o = i8((size_t)Hd * H * D); L[l].o_scale = b16(Hd, 0.002f);
        L[l].gu = i8((size_t)2 * I * Hd); L[l].gu_scale = b16(2 * I, 0.002f);
        L[l].down = i8((size_t)Hd * I); L[l].down_scale = b16(Hd, 0.002f);
        L[l].knorm_w = f32c(dI, 1.f); L[l].knorm_b = f32c(dI, 0.f); L[l].knorm_eps = 1e-5f;
#ifndef OLD
        L[l].iqw = i8((size_t)HI * (dI + 1) * Hd); L[l].iqw_scale = b16(HI * (dI + 1), 0.002f);
#endif
    }
    Model m; memset(&m, 0, sizeof m);
    m.n_layers = NL; m.hidden = Hd; m.n_heads = H; m.n_kv = Hkv; m.head_dim = D; m.inter = I; m.vocab = V;
    m.index_dim = dI; m.index_rope_dim = RD; m.max_pos = MP; m.scaling = 0.125f;
    m.embed = b16((size_t)V * Hd, 1.f); m.final_norm = f32c(Hd, 1.f); m.final_eps = 1e-5f;
    m.head = i8((size_t)V * Hd); m.head_scale = b16(V, 0.002f);
    m.cos = f32c((size_t)MP * D, 0.8f); m.sin = f32c((size_t)MP * D, 0.6f);
    m.icos = f32c((size_t)MP * RD / 2, 0.8f); m.isin = f32c((size_t)MP * RD / 2, 0.6f);
    m.layers = L;
#ifndef OLD
    m.index_heads = HI; m.index_w_scale = 0.088f;
#endif
    const int CAP = 6200;
    CacheView *kv = calloc(NL, sizeof(CacheView)), *ik = calloc(NL, sizeof(CacheView));
    for (int l = 0; l < NL; l++) {
        kv[l].k = b16((size_t)Hkv * CAP * D, 2.f); kv[l].v = b16((size_t)Hkv * CAP * D, 2.f);
        kv[l].k_row = kv[l].v_row = (int64_t)Hkv * CAP * D; kv[l].k_head = kv[l].v_head = (int64_t)CAP * D;
        kv[l].k_pos = kv[l].v_pos = D;
        ik[l].k = b16((size_t)CAP * dI, 2.f); ik[l].v = NULL; ik[l].k_row = (int64_t)CAP * dI; ik[l].k_head = (int64_t)CAP * dI;
        ik[l].k_pos = dI;
    }
    int64_t *mask = malloc(8 * CAP); for (int i = 0; i < CAP; i++) mask[i] = 1;
    float *logits = malloc(4 * V);
    int Ss[] = {200, 1000, 3000, 6000};
    for (int si = 0; si < 4; si++) {
        int S = Ss[si];
        for (int mode = 0; mode < 2; mode++) {
#ifdef OLD
            if (mode == 1) continue;
#endif
            int top_k = mode ? 2048 : 0;
            if (top_k && S <= top_k) continue;
            int64_t tok = 100, pos = S - 1;
            double t[15], c[15];
            for (int r = 0; r < 15; r++) {
                double t0 = now(), c0 = cpu();
#ifdef OLD
                int rc = dsa_decode_step(&m, 1, &tok, &pos, mask, S, kv, ik, logits, nt);
#else
                int rc = dsa_decode_step(&m, 1, &tok, &pos, mask, S, kv, ik, logits, nt, top_k);
#endif
                t[r] = now() - t0; c[r] = cpu() - c0;
                if (rc) { printf("rc %d\n", rc); return 1; }
            }
            qsort(t, 15, sizeof(double), cmpd); qsort(c, 15, sizeof(double), cmpd);
            printf("%s threads %d S %5d %-6s: wall median %.2f ms, min %.2f ms; cpu median %.2f ms, min %.2f ms\n",
#ifdef OLD
                   "old", 
#else
                   "new",
#endif
                   nt, S, mode ? "sparse" : "dense", 1e3 * t[7], 1e3 * t[0], 1e3 * c[7], 1e3 * c[0]);
            fflush(stdout);
        }
    }
    return 0;
}
