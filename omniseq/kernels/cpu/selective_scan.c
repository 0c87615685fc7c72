/* Fused CPU selective scan (Mamba-1), forward and backward.
 *
 * A block of 8 channels of one batch row at a time keeps its 8 x N states in
 * registers (vectorised across the channels), so the (B, L, D, N) decays and states
 * that the PyTorch path materialises never touch memory. Backward recomputes the
 * states of one block into a scratch buffer of L * N * 8 values and walks them in
 * reverse; dB and dC are summed over the channels of a slice, so callers give every
 * slice of channels its own dB/dC buffers.
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

/* The scan itself, once per element type: selective_scan_body.h. States stay in T:
 * double states halved the fp32 error for decays near 1 but cost 30%. */
#define T float
#define SUFFIX f32
#define EXP expf
#include "selective_scan_body.h"
#undef T
#undef SUFFIX
#undef EXP
#define T double
#define SUFFIX f64
#define EXP exp
#include "selective_scan_body.h"
#undef T
#undef SUFFIX
#undef EXP

/* softplus(x + bias[group, channel]) with PyTorch's threshold (x > 20 -> x), as flat loops
 * that the compiler vectorises; PyTorch's CPU log1p is scalar and cost more than the
 * whole scan forward. Rows are `groups` equal blocks, each with its own bias row.
 * Backward: grad_x = grad * sigmoid(x + bias) (1 above the threshold), and grad_bias
 * (zeroed by the caller) sums grad_x over each group's rows. Exponents are capped so that no
 * vector lane overflows: -ffast-math's reciprocal turns 1/(1+inf) into NaN. */
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
            out_row[j] = v > (T)20 ? v : LOG1P(EXP(v < (T)20 ? v : (T)20));                    \
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
            gx_row[j] = v > (T)20 ? g_row[j] : g_row[j] / ((T)1 + EXP(v > (T)-80 ? -v : (T)80)); \
        }                                                                                      \
        if (grad_bias)                                                                         \
            for (int64_t j = 0; j < dim; ++j) grad_bias[group * dim + j] += gx_row[j];         \
    }                                                                                          \
    return 0;                                                                                  \
}

DEFINE_SOFTPLUS(float, f32, expf, log1pf)
DEFINE_SOFTPLUS(double, f64, exp, log1p)
