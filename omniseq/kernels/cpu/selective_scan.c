/* Fused CPU selective scan (Mamba-1), forward and backward.
 *
 * One (batch, channel) pair at a time keeps its N states in registers, so the
 * (B, L, D, N) decays and states that the PyTorch path materialises never touch
 * memory. Backward recomputes the states of one channel into a scratch buffer of
 * L * N values and walks them in reverse; dB and dC are summed over the channels
 * of a slice, so callers give every slice of channels its own dB/dC buffers.
 *
 * Layout (contiguous): u, dt, y, du, ddt: (B, L, D); A, dA: (G, D, N); Dskip, dD:
 * (G, D) or NULL; Bm, Cm, dB, dC: (B, L, N); h0, h_last, dh0: (B, D, N). The batch is
 * `groups` equal blocks (e.g. the two directions of a bidirectional mixer, stacked):
 * row b belongs to group g = b / (B / G), which has its own A and D skip and scans
 * from the end when bit g of `reverse_mask` is set (by index, nothing is flipped).
 * Channels [d_start, d_stop) are handled; slices own their channels of dA and dD.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define STEP(t, length, reverse) ((reverse) ? (length) - 1 - (t) : (t))
/* Group of batch row b, its reverse flag, and the (g, d) row of A / D. */
#define GROUP_OF(b) ((b) / (batch / groups))
#define REVERSED(g) ((int)((reverse_mask >> (g)) & 1))

#define DEFINE_SCAN(T, S, SUFFIX, EXP)                                                         \
static inline __attribute__((always_inline)) int64_t fwd_body_##SUFFIX(                        \
    int64_t batch, int64_t length, int64_t dim, int64_t nstate, int64_t d_start,               \
    int64_t d_stop, int64_t groups, int64_t reverse_mask, const T *restrict u,                 \
    const T *restrict dt, const T *restrict A, const T *restrict Bm, const T *restrict Cm,     \
    const T *restrict Dskip, const T *restrict h0, T *restrict y, T *restrict h_last) {                                                       \
    S *restrict h = malloc(sizeof(S) * nstate);                                                \
    if (!h) return -1;                                                                         \
    for (int64_t b = 0; b < batch; ++b) {                                                      \
        int64_t group = GROUP_OF(b);                                                           \
        int reverse = REVERSED(group);                                                         \
        for (int64_t d = d_start; d < d_stop; ++d) {                                           \
            const T *a_row = A + (group * dim + d) * nstate;                                   \
            T skip = Dskip ? Dskip[group * dim + d] : (T)0;                                    \
            for (int64_t n = 0; n < nstate; ++n)                                               \
                h[n] = h0 ? (S)h0[(b * dim + d) * nstate + n] : (S)0;                          \
            for (int64_t s = 0; s < length; ++s) {                                             \
                int64_t t = STEP(s, length, reverse);                                          \
                int64_t at = (b * length + t) * dim + d;                                       \
                T step = dt[at], drive = step * u[at];                                         \
                S acc = 0;                                                                     \
                const T *b_t = Bm + (b * length + t) * nstate;                                 \
                const T *c_t = Cm + (b * length + t) * nstate;                                 \
                for (int64_t n = 0; n < nstate; ++n) {                                         \
                    h[n] = (S)EXP(step * a_row[n]) * h[n] + (S)(drive * b_t[n]);               \
                    acc += c_t[n] * h[n];                                                      \
                }                                                                              \
                y[at] = (T)acc + skip * u[at];                                                 \
            }                                                                                  \
            if (h_last)                                                                        \
                for (int64_t n = 0; n < nstate; ++n)                                           \
                    h_last[(b * dim + d) * nstate + n] = (T)h[n];                              \
        }                                                                                      \
    }                                                                                          \
    free(h);                                                                                   \
    return 0;                                                                                  \
}                                                                                              \
                                                                                               \
static inline __attribute__((always_inline)) int64_t bwd_body_##SUFFIX(                        \
    int64_t batch, int64_t length, int64_t dim, int64_t nstate, int64_t d_start,               \
    int64_t d_stop, int64_t groups, int64_t reverse_mask, const T *restrict u,                 \
    const T *restrict dt, const T *restrict A, const T *restrict Bm, const T *restrict Cm,     \
    const T *restrict Dskip, const T *restrict h0, const T *restrict gy,                       \
    const T *restrict g_last, T *restrict du, T *restrict ddt, T *restrict dA,                 \
    T *restrict dD, T *restrict dB, T *restrict dC, T *restrict dh0) {                         \
    /* states[s] is the state before step s (states[0] = h0); decay[s] = exp(dt * A). */       \
    S *restrict states = malloc(sizeof(S) * (length + 1) * nstate);                            \
    T *restrict decay = malloc(sizeof(T) * (length > 0 ? length : 1) * nstate);                \
    S *restrict g = malloc(sizeof(S) * nstate);                                                \
    if (!states || !decay || !g) { free(states); free(decay); free(g); return -1; }            \
    for (int64_t b = 0; b < batch; ++b) {                                                      \
        int64_t group = GROUP_OF(b);                                                           \
        int reverse = REVERSED(group);                                                         \
        for (int64_t d = d_start; d < d_stop; ++d) {                                           \
            const T *a_row = A + (group * dim + d) * nstate;                                   \
            T *dA_row = dA + (group * dim + d) * nstate;                                       \
            T skip = Dskip ? Dskip[group * dim + d] : (T)0;                                    \
            S grad_skip = 0;                                                                   \
            for (int64_t n = 0; n < nstate; ++n)                                               \
                states[n] = h0 ? (S)h0[(b * dim + d) * nstate + n] : (S)0;                     \
            for (int64_t s = 0; s < length; ++s) {                                             \
                int64_t t = STEP(s, length, reverse);                                          \
                int64_t at = (b * length + t) * dim + d;                                       \
                T step = dt[at], drive = step * u[at];                                         \
                const T *b_t = Bm + (b * length + t) * nstate;                                 \
                const S *prev = states + s * nstate;                                           \
                S *next = states + (s + 1) * nstate;                                           \
                T *dec = decay + s * nstate;                                                   \
                for (int64_t n = 0; n < nstate; ++n) {                                         \
                    dec[n] = EXP(step * a_row[n]);                                             \
                    next[n] = (S)dec[n] * prev[n] + (S)(drive * b_t[n]);                       \
                }                                                                              \
            }                                                                                  \
            for (int64_t n = 0; n < nstate; ++n)                                               \
                g[n] = g_last ? (S)g_last[(b * dim + d) * nstate + n] : (S)0;                  \
            for (int64_t s = length - 1; s >= 0; --s) {                                        \
                int64_t t = STEP(s, length, reverse);                                          \
                int64_t at = (b * length + t) * dim + d;                                       \
                T step = dt[at], x = u[at], grad_y = gy[at];                                   \
                S grad_dt = 0, grad_u = 0;                                                     \
                const T *b_t = Bm + (b * length + t) * nstate;                                 \
                const T *c_t = Cm + (b * length + t) * nstate;                                 \
                T *db_t = dB + (b * length + t) * nstate, *dc_t = dC + (b * length + t) * nstate; \
                const S *prev = states + s * nstate, *cur = states + (s + 1) * nstate;         \
                const T *dec = decay + s * nstate;                                             \
                for (int64_t n = 0; n < nstate; ++n) {                                         \
                    S gh = g[n] + (S)(grad_y * c_t[n]);                                        \
                    S g_decay = gh * prev[n] * dec[n];                                         \
                    dc_t[n] += (T)(grad_y * cur[n]);                                           \
                    db_t[n] += (T)(gh * (step * x));                                           \
                    dA_row[n] += (T)(g_decay * step);                                          \
                    grad_dt += g_decay * a_row[n] + gh * b_t[n] * x;                           \
                    grad_u += gh * b_t[n];                                                     \
                    g[n] = gh * dec[n];                                                        \
                }                                                                              \
                du[at] = (T)(grad_u * step) + grad_y * skip;                                   \
                ddt[at] = (T)grad_dt;                                                          \
                grad_skip += grad_y * x;                                                       \
            }                                                                                  \
            if (dD) dD[group * dim + d] += (T)grad_skip;                                       \
            if (dh0)                                                                           \
                for (int64_t n = 0; n < nstate; ++n)                                           \
                    dh0[(b * dim + d) * nstate + n] = (T)g[n];                                 \
        }                                                                                      \
    }                                                                                          \
    free(states); free(decay); free(g);                                                        \
    return 0;                                                                                  \
}                                                                                              \
                                                                                               \
/* Mamba's common state sizes get their own copies with constant trip counts: fully      \
 * unrolled, vectorised inner loops. */                                                       \
int64_t selective_scan_fwd_##SUFFIX(                                                           \
    int64_t batch, int64_t length, int64_t dim, int64_t nstate, int64_t d_start,               \
    int64_t d_stop, int64_t groups, int64_t reverse_mask, const T *u, const T *dt,             \
    const T *A, const T *Bm, const T *Cm, const T *Dskip, const T *h0, T *y, T *h_last) {      \
    if (groups < 1 || batch % groups) return -2;                                               \
    switch (nstate) {                                                                          \
    case 16: return fwd_body_##SUFFIX(batch, length, dim, 16, d_start, d_stop, groups,         \
                 reverse_mask, u, dt, A, Bm, Cm, Dskip, h0, y, h_last);                        \
    case 8: return fwd_body_##SUFFIX(batch, length, dim, 8, d_start, d_stop, groups,           \
                 reverse_mask, u, dt, A, Bm, Cm, Dskip, h0, y, h_last);                        \
    case 4: return fwd_body_##SUFFIX(batch, length, dim, 4, d_start, d_stop, groups,           \
                 reverse_mask, u, dt, A, Bm, Cm, Dskip, h0, y, h_last);                        \
    default: return fwd_body_##SUFFIX(batch, length, dim, nstate, d_start, d_stop, groups,     \
                 reverse_mask, u, dt, A, Bm, Cm, Dskip, h0, y, h_last);                        \
    }                                                                                          \
}                                                                                              \
                                                                                               \
int64_t selective_scan_bwd_##SUFFIX(                                                           \
    int64_t batch, int64_t length, int64_t dim, int64_t nstate, int64_t d_start,               \
    int64_t d_stop, int64_t groups, int64_t reverse_mask, const T *u, const T *dt,             \
    const T *A, const T *Bm, const T *Cm, const T *Dskip, const T *h0, const T *gy,            \
    const T *g_last, T *du, T *ddt, T *dA, T *dD, T *dB, T *dC, T *dh0) {                      \
    if (groups < 1 || batch % groups) return -2;                                               \
    switch (nstate) {                                                                          \
    case 16: return bwd_body_##SUFFIX(batch, length, dim, 16, d_start, d_stop, groups,         \
                 reverse_mask, u, dt, A, Bm, Cm, Dskip, h0, gy, g_last, du, ddt, dA, dD, dB,   \
                 dC, dh0);                                                                     \
    case 8: return bwd_body_##SUFFIX(batch, length, dim, 8, d_start, d_stop, groups,           \
                 reverse_mask, u, dt, A, Bm, Cm, Dskip, h0, gy, g_last, du, ddt, dA, dD, dB,   \
                 dC, dh0);                                                                     \
    case 4: return bwd_body_##SUFFIX(batch, length, dim, 4, d_start, d_stop, groups,           \
                 reverse_mask, u, dt, A, Bm, Cm, Dskip, h0, gy, g_last, du, ddt, dA, dD, dB,   \
                 dC, dh0);                                                                     \
    default: return bwd_body_##SUFFIX(batch, length, dim, nstate, d_start, d_stop, groups,     \
                 reverse_mask, u, dt, A, Bm, Cm, Dskip, h0, gy, g_last, du, ddt, dA, dD, dB,   \
                 dC, dh0);                                                                     \
    }                                                                                          \
}

/* softplus(x + bias[group, channel]) with PyTorch's threshold (x > 20 -> x), as flat loops
 * that the compiler vectorises; PyTorch's CPU log1p is scalar and cost more than the
 * whole scan forward. Rows are `groups` equal blocks, each with its own bias row.
 * Backward: grad_x = grad * sigmoid(x + bias) (1 above the threshold), and grad_bias
 * (zeroed by the caller) sums grad_x over each group's rows. */
#define DEFINE_SOFTPLUS(T, SUFFIX, EXP, LOG1P)                                                 \
int64_t softplus_bias_##SUFFIX(int64_t rows, int64_t dim, int64_t groups, const T *x,          \
                               const T *bias, T *out) {                                        \
    if (groups < 1 || rows % groups) return -2;                                                \
    for (int64_t r = 0; r < rows; ++r) {                                                       \
        const T *x_row = x + r * dim;                                                          \
        const T *b_row = bias ? bias + (r / (rows / groups)) * dim : NULL;                     \
        T *out_row = out + r * dim;                                                            \
        for (int64_t j = 0; j < dim; ++j) {                                                    \
            T v = x_row[j] + (b_row ? b_row[j] : (T)0);                                        \
            out_row[j] = v > (T)20 ? v : LOG1P(EXP(v));                                        \
        }                                                                                      \
    }                                                                                          \
    return 0;                                                                                  \
}                                                                                              \
                                                                                               \
int64_t softplus_bias_bwd_##SUFFIX(int64_t rows, int64_t dim, int64_t groups, const T *x,      \
                                   const T *bias, const T *grad, T *grad_x, T *grad_bias) {    \
    if (groups < 1 || rows % groups) return -2;                                                \
    for (int64_t r = 0; r < rows; ++r) {                                                       \
        int64_t group = r / (rows / groups);                                                   \
        const T *x_row = x + r * dim, *g_row = grad + r * dim;                                 \
        const T *b_row = bias ? bias + group * dim : NULL;                                     \
        T *gx_row = grad_x + r * dim;                                                          \
        for (int64_t j = 0; j < dim; ++j) {                                                    \
            T v = x_row[j] + (b_row ? b_row[j] : (T)0);                                        \
            gx_row[j] = v > (T)20 ? g_row[j] : g_row[j] / ((T)1 + EXP(-v));                    \
        }                                                                                      \
        if (grad_bias)                                                                         \
            for (int64_t j = 0; j < dim; ++j) grad_bias[group * dim + j] += gx_row[j];         \
    }                                                                                          \
    return 0;                                                                                  \
}

/* States stay in T: double states halved the fp32 error for decays near 1 but cost 30%. */
DEFINE_SCAN(float, float, f32, expf)
DEFINE_SCAN(double, double, f64, exp)
DEFINE_SOFTPLUS(float, f32, expf, log1pf)
DEFINE_SOFTPLUS(double, f64, exp, log1p)
