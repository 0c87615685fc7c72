/* ConvS5's diagonal complex recurrence over time-major frames, forward and reverse.
 *
 * Layout: `z` and `g` are (steps, rows, 2P) with the P complex channels interleaved
 * (re, im, re, ...): a channels-last (steps*B, 2P, H, W) tensor with rows = B*H*W. Each
 * frame is one contiguous slab, so the torch path runs one fused multiply-add per frame
 * over the whole slab and streams it through memory several times (with bf16 storage:
 * a cast up, the update, a cast back). Here a block of rows is carried through every
 * step with its state in a small buffer that stays in cache: each frame is read and
 * written once, in its storage type, and the recurrence always runs in fp32.
 *
 * Forward:  h_t = a * h_{t-1} + z_t written over z_t (rounded to the storage type);
 *           optionally tangent = a * tangent + h_{t-1} (dh/da, from global step 1 on).
 * Reverse:  g_t = input_t + conj(a) g_{t+1} (+ extra at the last step) written over g_t;
 *           optionally dL/da += conj(h_{t-1}) g_t with h_{t-1} read from `states`
 *           (`prev` before the first step).
 * Rows [row_lo, row_hi) are handled (a caller may split rows over threads, giving each
 * slice its own dL/da buffer of 2P doubles, re/im interleaved, and summing them).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float load_f32(const float *p, int64_t i) { return p[i]; }
static inline void store_f32(float *p, int64_t i, float v) { p[i] = v; }

static inline float load_bf16(const uint16_t *p, int64_t i) {
    uint32_t bits = (uint32_t)p[i] << 16;
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* Round to nearest even, as PyTorch rounds fp32 to bf16 (NaN stays a quiet NaN); branch-free
 * so that the loops calling it vectorise. */
static inline void store_bf16(uint16_t *p, int64_t i, float v) {
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    p[i] = (uint16_t)((bits & 0x7fffffffu) > 0x7f800000u ? (bits >> 16) | 0x0040u : rounded);
}

/* Rows per block: the block's state and its slab of a frame (64 KB each) stay in L2, and each
 * step reads a long enough run of a frame for the prefetchers (4 KB runs measured 20% slower). */
static inline int64_t block_rows(int64_t width) {
    int64_t rows = 16384 / width;
    return rows < 1 ? 1 : rows;
}

/* One row of 2P interleaved channels: h = a * h + z (complex); ar/ai hold a's real and
 * imaginary parts per complex channel. */
static inline void advance_row(int64_t p, float *restrict h, const float *restrict z,
                               const float *restrict ar, const float *restrict ai) {
    for (int64_t c = 0; c < p; ++c) {
        const float hr = h[2 * c], hi = h[2 * c + 1];
        h[2 * c] = ar[c] * hr - ai[c] * hi + z[2 * c];
        h[2 * c + 1] = ar[c] * hi + ai[c] * hr + z[2 * c + 1];
    }
}

/* tangent = a * tangent + h (before h advances). */
static inline void advance_tangent(int64_t p, float *restrict tg, const float *restrict h,
                                   const float *restrict ar, const float *restrict ai) {
    advance_row(p, tg, h, ar, ai);
}

/* sum += conj(h) * g over one row. */
static inline void conj_dot_row(int64_t p, float *restrict sum, const float *restrict h,
                                const float *restrict g) {
    for (int64_t c = 0; c < p; ++c) {
        sum[2 * c] += h[2 * c] * g[2 * c] + h[2 * c + 1] * g[2 * c + 1];
        sum[2 * c + 1] += h[2 * c] * g[2 * c + 1] - h[2 * c + 1] * g[2 * c];
    }
}

#define DEFINE_PLANE_SCAN(S, SUFFIX, LOAD, STORE)                                                \
static void gather_##SUFFIX(int64_t n, float *restrict out, const S *restrict in) {                \
    for (int64_t i = 0; i < n; ++i) out[i] = LOAD(in, i);                                        \
}                                                                                                \
static void scatter_##SUFFIX(int64_t n, S *restrict out, const float *restrict in) {               \
    for (int64_t i = 0; i < n; ++i) STORE(out, i, in[i]);                                        \
}                                                                                                \
                                                                                                 \
int64_t plane_scan_fwd_##SUFFIX(int64_t steps, int64_t rows, int64_t p, int64_t row_lo,          \
                                int64_t row_hi, S *z, const float *a, const float *carry,         \
                                float *last, float *tangent, int64_t first_step) {                \
    const int64_t width = 2 * p, block = block_rows(width);                                      \
    float *h = malloc(sizeof(float) * (block * width * 2 + width));                              \
    if (!h) return -1;                                                                           \
    float *zin = h + block * width, *ar = zin + block * width, *ai = ar + p;                     \
    for (int64_t c = 0; c < p; ++c) {                                                            \
        ar[c] = a[2 * c];                                                                        \
        ai[c] = a[2 * c + 1];                                                                    \
    }                                                                                            \
    for (int64_t r0 = row_lo; r0 < row_hi; r0 += block) {                                        \
        const int64_t nrows = r0 + block < row_hi ? block : row_hi - r0;                         \
        const int64_t n = nrows * width, base = r0 * width;                                      \
        int have_prev = carry != NULL;                                                           \
        if (carry) memcpy(h, carry + base, sizeof(float) * n);                                   \
        for (int64_t t = 0; t < steps; ++t) {                                                    \
            S *zt = z + t * rows * width + base;                                                 \
            if (!have_prev) {                                                                    \
                gather_##SUFFIX(n, h, zt);                                                         \
            } else {                                                                             \
                gather_##SUFFIX(n, zin, zt);                                                       \
                if (tangent && first_step + t >= 1)                                              \
                    for (int64_t r = 0; r < nrows; ++r)                                          \
                        advance_tangent(p, tangent + base + r * width, h + r * width, ar, ai);   \
                for (int64_t r = 0; r < nrows; ++r)                                              \
                    advance_row(p, h + r * width, zin + r * width, ar, ai);                      \
            }                                                                                    \
            scatter_##SUFFIX(n, zt, h);                                                            \
            have_prev = 1;                                                                       \
        }                                                                                        \
        memcpy(last + base, h, sizeof(float) * n);                                               \
    }                                                                                            \
    free(h);                                                                                     \
    return 0;                                                                                    \
}                                                                                                \
                                                                                                 \
int64_t plane_scan_bwd_##SUFFIX(int64_t steps, int64_t rows, int64_t p, int64_t row_lo,          \
                                int64_t row_hi, S *g, int64_t has_input, const float *a,          \
                                const float *later, const float *extra, float *first,             \
                                const S *states, const float *prev, double *grad_a) {             \
    const int64_t width = 2 * p, block = block_rows(width);                                      \
    float *acc = malloc(sizeof(float) * (2 * block * width + 2 * width));                        \
    if (!acc) return -1;                                                                         \
    float *in = acc + block * width, *sum = in + block * width, *ar = sum + width, *ai = ar + p; \
    for (int64_t c = 0; c < p; ++c) { /* conj(a) */                                              \
        ar[c] = a[2 * c];                                                                        \
        ai[c] = -a[2 * c + 1];                                                                   \
    }                                                                                            \
    for (int64_t r0 = row_lo; r0 < row_hi; r0 += block) {                                        \
        const int64_t nrows = r0 + block < row_hi ? block : row_hi - r0;                         \
        const int64_t n = nrows * width, base = r0 * width;                                      \
        if (later) memcpy(acc, later + base, sizeof(float) * n);                                 \
        else memset(acc, 0, sizeof(float) * n);                                                  \
        for (int64_t t = steps - 1; t >= 0; --t) {                                               \
            S *gt = g + t * rows * width + base;                                                 \
            if (has_input) gather_##SUFFIX(n, in, gt);                                             \
            else memset(in, 0, sizeof(float) * n);                                               \
            if (extra && t == steps - 1)                                                         \
                for (int64_t i = 0; i < n; ++i) in[i] += extra[base + i];                        \
            for (int64_t r = 0; r < nrows; ++r) /* g_t = in_t + conj(a) g_{t+1} */               \
                advance_row(p, acc + r * width, in + r * width, ar, ai);                         \
            scatter_##SUFFIX(n, gt, acc);                                                          \
            if (!grad_a) continue;                                                               \
            const float *h_prev = NULL; /* h_{t-1} */                                            \
            if (t > 0) {                                                                         \
                gather_##SUFFIX(n, in, states + (t - 1) * rows * width + base);                    \
                h_prev = in;                                                                     \
            } else if (prev) {                                                                   \
                h_prev = prev + base;                                                            \
            }                                                                                    \
            if (!h_prev) continue;                                                               \
            /* one step of one block in fp32 (at most a block's rows of terms), the rest in fp64 */ \
            memset(sum, 0, sizeof(float) * width);                                               \
            for (int64_t r = 0; r < nrows; ++r)                                                  \
                conj_dot_row(p, sum, h_prev + r * width, acc + r * width);                       \
            for (int64_t c = 0; c < width; ++c) grad_a[c] += sum[c];                             \
        }                                                                                        \
        memcpy(first + base, acc, sizeof(float) * n);                                            \
    }                                                                                            \
    free(acc);                                                                                   \
    return 0;                                                                                    \
}

DEFINE_PLANE_SCAN(float, f32, load_f32, store_f32)
DEFINE_PLANE_SCAN(uint16_t, bf16, load_bf16, store_bf16)
