/* MetaNet's coordinate-wise generators as fused CPU loops: each coordinate's LSTM state (20 + 20 numbers) or MLP
 * activations stay in registers and the first-level cache for all of its steps, where the torch ops of
 * coordinatewise.py write and read every gate of every coordinate through memory, a dozen times per step.
 *
 * Compiled by coordinatewise.py (`cc -O3 -march=native -ffast-math -fopenmp`) once per machine, with -Dreal=float
 * and -Dreal=double. Layouts are torch's contiguous tensors: coordinates last in the LSTM's input `x [T, 2, n]`,
 * pairs in the MLP's `x [n, 2]`. Coordinates run in tiles of L, one OpenMP thread per tile at a time, each tile
 * as NV vectors of V lanes (GCC's vector extension, split by the compiler where the CPU's registers are narrower):
 * a product's accumulator stays in a register. A backward adds each thread's weight gradients, lane by lane, into
 * vector accumulators and at its end into the thread's row of `partial [threads, size]`, which the caller sums. */
#include <stdlib.h>
#include <string.h>
#include <tgmath.h> /* exp of a float is expf */
#include <omp.h>

#define H 20          /* hidden units of both generators */
#define G (4 * H)     /* LSTM gates, torch's order (i, f, g, o) */
#define K (H + 3)     /* columns of the LSTM's W: (W_hh, W_ih, b) */
#define L 128         /* coordinates per tile */
#define V (64 / (int)sizeof(real))
#define NV (L / V)
typedef real vec __attribute__((vector_size(64)));
#define LANES(a) ((real *)(a))
/* Loops over a tile's NV vectors: independent accumulators, where one would wait on each multiply-add. */
#define UNROLL _Pragma("GCC unroll 16")

/* The logistic function; its argument clipped to +-80 (exp(80) is finite in float), as -ffast-math's exp need not
 * give inf for a large argument. */
static inline real sigm(real x) { return 1 / (1 + exp(x < -80 ? 80 : x > 80 ? -80 : -x)); }

static vec *vectors(size_t count) { return aligned_alloc(64, count * sizeof(vec)); }

/* The coordinates of the tile from `start` that are below n: L, or fewer in the last tile. */
static int tile_lanes(long n, long start) { return n - start < L ? (int)(n - start) : L; }

/* The horizontal sums of `count` vector accumulators, added to `out`. */
static void add_lanes(const vec *acc, int count, real *out) {
    for (int i = 0; i < count; i++)
        for (int v = 0; v < V; v++) out[i] += acc[i][v];
}

/* acc[k] += d * z[k] summed over the tile's NV vectors (lane by lane), for `count` <= 8 rows of `z` (row stride
 * NV): the sums in registers. */
static inline __attribute__((always_inline)) void outer(const vec *d, const vec *z, vec *acc, const int count) {
    vec sum[8] = {{0}};
    for (int q = 0; q < NV; q++)
        UNROLL for (int k = 0; k < count; k++) sum[k] += d[q] * z[k * NV + q];
    for (int k = 0; k < count; k++) acc[k] += sum[k];
}

/* One tile of the LSTM from h = c = 0 on `xs [T][2][NV]`. Every step's state (7 rows of NV: h_prev, i, f, g, o,
 * c_prev, tanh c) is written to `saved [T][7][H][NV]`; the last h ends in `h [H][NV]`. */
static void lstm_tile(int T, const vec *xs, const real *W, vec *h, vec *saved) {
    vec c[H][NV], pre[G][NV];
    memset(c, 0, sizeof c);
    memset(h, 0, sizeof(vec) * H * NV);
    for (int t = 0; t < T; t++) {
        const vec *x0 = xs + 2 * t * NV, *x1 = x0 + NV;
        for (int j = 0; j < G; j++) {
            const real *w = W + j * K;
            vec acc[NV];
            UNROLL for (int q = 0; q < NV; q++) acc[q] = w[H + 2] + w[H] * x0[q] + w[H + 1] * x1[q];
            for (int k = 0; k < (t ? H : 0); k++) /* h = 0 at the first step */
                UNROLL for (int q = 0; q < NV; q++) acc[q] += w[k] * h[k * NV + q];
            memcpy(pre[j], acc, sizeof acc);
        }
        vec *s = saved + (size_t)t * 7 * H * NV;
        memcpy(s, h, sizeof(vec) * H * NV);
        real *p = LANES(pre), *r = LANES(s), *cc = LANES(c), *hh = LANES(h);
#pragma omp simd
        for (int e = 0; e < H * L; e++) {
            real i = sigm(p[e]), f = sigm(p[H * L + e]), g = 2 * sigm(2 * p[2 * H * L + e]) - 1;
            real o = sigm(p[3 * H * L + e]), cp = cc[e];
            cc[e] = f * cp + i * g;
            real tc = 2 * sigm(2 * cc[e]) - 1;
            hh[e] = o * tc;
            r[1 * H * L + e] = i, r[2 * H * L + e] = f, r[3 * H * L + e] = g;
            r[4 * H * L + e] = o, r[5 * H * L + e] = cp, r[6 * H * L + e] = tc;
        }
    }
}

/* The tile's inputs `xs [T][2][NV]` from `x [T, 2, n]`, lanes past n zero; returns the lanes in use. */
static int lstm_gather(int T, long n, const real *x, long start, vec *xs) {
    int lanes = tile_lanes(n, start);
    memset(xs, 0, sizeof(vec) * T * 2 * NV);
    for (int r = 0; r < 2 * T; r++) memcpy(LANES(xs + r * NV), x + r * n + start, sizeof(real) * lanes);
    return lanes;
}

/* y[n] = w_out . h_T + b_out for every coordinate. */
void lstm_forward(long n, int T, const real *x, const real *W, const real *w_out, real b_out, real *y,
                  int threads) {
#pragma omp parallel num_threads(threads)
    {
        vec *xs = vectors(T * 2 * NV), *saved = vectors((size_t)T * 7 * H * NV), h[H][NV];
#pragma omp for schedule(static)
        for (long start = 0; start < n; start += L) {
            int lanes = lstm_gather(T, n, x, start, xs);
            lstm_tile(T, xs, W, &h[0][0], saved);
            vec out[NV];
            UNROLL for (int q = 0; q < NV; q++) out[q] = h[0][q] * w_out[0] + b_out;
            for (int k = 1; k < H; k++)
                UNROLL for (int q = 0; q < NV; q++) out[q] += w_out[k] * h[k][q];
            memcpy(y + start, out, sizeof(real) * lanes);
        }
        free(xs);
        free(saved);
    }
}

/* Gradients of sum(gy * y): W's (G x K) and w_out's (H) into this thread's row of `partial [threads, G*K + H]`,
 * and the inputs' into `gx [T, 2, n]` when it is not NULL. */
void lstm_backward(long n, int T, const real *x, const real *W, const real *w_out, const real *gy, real *partial,
                   real *gx, int threads) {
#pragma omp parallel num_threads(threads)
    {
        vec *xs = vectors(T * 2 * NV), *saved = vectors((size_t)T * 7 * H * NV), *acc = vectors(G * K + H);
        vec h[H][NV], dh[H][NV], dc[H][NV], dpre[G][NV], g[NV], z[K][NV];
        memset(acc, 0, sizeof(vec) * (G * K + H));
        for (int q = 0; q < NV; q++) z[K - 1][q] = (vec){0} + 1;
#pragma omp for schedule(static)
        for (long start = 0; start < n; start += L) {
            int lanes = lstm_gather(T, n, x, start, xs);
            lstm_tile(T, xs, W, &h[0][0], saved);
            memset(g, 0, sizeof g);
            memcpy(LANES(g), gy + start, sizeof(real) * lanes); /* lanes past n carry no gradient */
            for (int k = 0; k < H; k++) {
                vec sum = {0};
                for (int q = 0; q < NV; q++) sum += g[q] * h[k][q], dh[k][q] = w_out[k] * g[q];
                acc[G * K + k] += sum;
            }
            memset(dc, 0, sizeof dc);
            for (int t = T - 1; t >= 0; t--) {
                const vec *s = saved + (size_t)t * 7 * H * NV, *x0 = xs + 2 * t * NV;
                const real *r = LANES(s);
                real *d = LANES(dpre), *dhh = LANES(dh), *dcc = LANES(dc);
#pragma omp simd
                for (int e = 0; e < H * L; e++) {
                    real i = r[1 * H * L + e], f = r[2 * H * L + e], gg = r[3 * H * L + e];
                    real o = r[4 * H * L + e], cp = r[5 * H * L + e], tc = r[6 * H * L + e];
                    real dcell = dcc[e] + dhh[e] * o * (1 - tc * tc);
                    d[e] = dcell * gg * i * (1 - i);
                    d[H * L + e] = dcell * cp * f * (1 - f);
                    d[2 * H * L + e] = dcell * i * (1 - gg * gg);
                    d[3 * H * L + e] = dhh[e] * tc * o * (1 - o);
                    dcc[e] = dcell * f;
                }
                memcpy(z, s, sizeof(vec) * H * NV); /* (h_prev, x, 1): what W multiplied */
                memcpy(z[H], x0, sizeof(vec) * 2 * NV);
                for (int j = 0; j < G; j++) {
                    if (t) { /* h_prev = 0 at the first step */
                        outer(dpre[j], z[0], acc + j * K, 8);
                        outer(dpre[j], z[8], acc + j * K + 8, 8);
                    }
                    outer(dpre[j], z[16], acc + j * K + 16, K - 16);
                }
                for (int k = t ? 0 : H; k < (gx ? H + 2 : H); k++) { /* d h_prev (none at the first step), d x */
                    vec sum[NV] = {{0}};
                    for (int j = 0; j < G; j++)
                        UNROLL for (int q = 0; q < NV; q++) sum[q] += W[j * K + k] * dpre[j][q];
                    if (k < H)
                        memcpy(dh[k], sum, sizeof sum);
                    else
                        memcpy(gx + (2 * t + k - H) * n + start, sum, sizeof(real) * lanes);
                }
            }
        }
        add_lanes(acc, G * K + H, partial + (size_t)omp_get_thread_num() * (G * K + H));
        free(xs);
        free(saved);
        free(acc);
    }
}

/* max(a, 0) of the H x L values of `a`, in place. */
static void relu(real *a) {
#pragma omp simd
    for (int e = 0; e < H * L; e++) a[e] = a[e] > 0 ? a[e] : 0;
}

/* d[e] where the layer's output a[e] is positive, else 0 (ReLU's derivative, as torch takes it at 0). */
static void where_positive(const real *a, real *d) {
#pragma omp simd
    for (int e = 0; e < H * L; e++) d[e] = a[e] > 0 ? d[e] : 0;
}

/* The MLP 2 -> 20 -> 20 -> 1 (ReLU) on one tile of `x [n, 2]` pairs: its layers' inputs a0 [2][NV], a1 and
 * a2 [H][NV]; returns the lanes in use (those past n are zero inputs). */
static int mlp_tile(long n, const real *x, long start, const real *w0, const real *b0, const real *w1,
                    const real *b1, vec a0[2][NV], vec a1[H][NV], vec a2[H][NV]) {
    int lanes = tile_lanes(n, start);
    real *x0 = LANES(a0[0]), *x1 = LANES(a0[1]);
    for (int l = 0; l < L; l++) {
        x0[l] = l < lanes ? x[2 * (start + l)] : 0;
        x1[l] = l < lanes ? x[2 * (start + l) + 1] : 0;
    }
    for (int q = 0; q < NV; q++)
        for (int j = 0; j < H; j++) a1[j][q] = b0[j] + w0[2 * j] * a0[0][q] + w0[2 * j + 1] * a0[1][q];
    relu(LANES(a1));
    for (int j = 0; j < H; j++) {
        vec v[NV];
        UNROLL for (int q = 0; q < NV; q++) v[q] = b1[j] + w1[j * H] * a1[0][q];
        for (int k = 1; k < H; k++)
            UNROLL for (int q = 0; q < NV; q++) v[q] += w1[j * H + k] * a1[k][q];
        memcpy(a2[j], v, sizeof v);
    }
    relu(LANES(a2));
    return lanes;
}

void mlp_forward(long n, const real *x, const real *w0, const real *b0, const real *w1, const real *b1,
                 const real *w2, real b2, real *y, int threads) {
#pragma omp parallel num_threads(threads)
    {
        vec a0[2][NV], a1[H][NV], a2[H][NV];
#pragma omp for schedule(static)
        for (long start = 0; start < n; start += L) {
            int lanes = mlp_tile(n, x, start, w0, b0, w1, b1, a0, a1, a2);
            vec out[NV];
            UNROLL for (int q = 0; q < NV; q++) out[q] = b2 + w2[0] * a2[0][q];
            for (int j = 1; j < H; j++)
                UNROLL for (int q = 0; q < NV; q++) out[q] += w2[j] * a2[j][q];
            memcpy(y + start, out, sizeof(real) * lanes);
        }
    }
}

/* Gradients of sum(gy * y) into this thread's row of `partial [threads, size]`, in the order (w0 [H x 2], b0 [H],
 * w1 [H x H], b1 [H], w2 [H]); the inputs' into `gx [n, 2]` when it is not NULL. */
void mlp_backward(long n, const real *x, const real *w0, const real *b0, const real *w1, const real *b1,
                  const real *w2, const real *gy, real *partial, real *gx, int threads) {
    enum { SIZE = 2 * H + H + H * H + H + H };
#pragma omp parallel num_threads(threads)
    {
        vec *acc = vectors(SIZE), *gw0 = acc, *gb0 = gw0 + 2 * H, *gw1 = gb0 + H, *gb1 = gw1 + H * H, *gw2 = gb1 + H;
        vec a0[2][NV], a1[H][NV], a2[H][NV], d1[H][NV], d0[H][NV], g[NV];
        memset(acc, 0, sizeof(vec) * SIZE);
#pragma omp for schedule(static)
        for (long start = 0; start < n; start += L) {
            int lanes = mlp_tile(n, x, start, w0, b0, w1, b1, a0, a1, a2);
            memset(g, 0, sizeof g);
            memcpy(LANES(g), gy + start, sizeof(real) * lanes);
            for (int q = 0; q < NV; q++)
                for (int j = 0; j < H; j++) gw2[j] += g[q] * a2[j][q], d1[j][q] = w2[j] * g[q];
            where_positive(LANES(a2), LANES(d1));
            for (int k = 0; k < H; k++) {
                vec v[NV] = {{0}};
                for (int j = 0; j < H; j++)
                    UNROLL for (int q = 0; q < NV; q++) v[q] += w1[j * H + k] * d1[j][q];
                memcpy(d0[k], v, sizeof v);
            }
            where_positive(LANES(a1), LANES(d0));
            for (int j = 0; j < H; j++) {
                vec sum[H] = {{0}};
                for (int q = 0; q < NV; q++)
                    UNROLL for (int k = 0; k < H; k++) sum[k] += d1[j][q] * a1[k][q];
                for (int k = 0; k < H; k++) gw1[j * H + k] += sum[k];
                for (int q = 0; q < NV; q++) {
                    gb1[j] += d1[j][q], gb0[j] += d0[j][q];
                    gw0[2 * j] += d0[j][q] * a0[0][q], gw0[2 * j + 1] += d0[j][q] * a0[1][q];
                }
            }
            if (gx) {
                for (int l = 0; l < lanes; l++) {
                    real s0 = 0, s1 = 0;
                    for (int j = 0; j < H; j++) s0 += w0[2 * j] * LANES(d0[j])[l], s1 += w0[2 * j + 1] * LANES(d0[j])[l];
                    gx[2 * (start + l)] = s0, gx[2 * (start + l) + 1] = s1;
                }
            }
        }
        add_lanes(acc, SIZE, partial + (size_t)omp_get_thread_num() * SIZE);
        free(acc);
    }
}
