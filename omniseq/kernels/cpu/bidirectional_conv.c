/* Causal and anti-causal depthwise convolutions with SiLU, fused (Vim / Caduceus
 * bidirectional Mamba), forward and backward, in the sequence-major layout.
 *
 *   pre[g, b, t, d] = bias[g, d] + sum_k w[g, d, k] * x[b, t + shift_g(k), d]
 *   out = silu(pre),  shift_0(k) = k - (K - 1)  (causal),  shift_1(k) = (K - 1) - k
 *
 * Group 1 is the causal conv of the reversed sequence, reversed back, done by index.
 * Out-of-range taps read zero. x rows have stride `x_stride` (a view into a wider
 * projection needs no copy); out, grad_out: (2, B, L, D) contiguous; w, dw: (2, K, D);
 * bias, dbias: (2, D). Channels [d_start, d_stop) are handled (a slice owns its
 * channels of dx, dw and dbias); the inner loops run over contiguous channels.
 */
#include <math.h>
#include <stdint.h>

/* -ffast-math computes 1/(1+e) with a reciprocal estimate that turns e = inf into NaN, so the
 * exponent is capped where e^80 is still finite in float and the sigmoid is 0 to the last bit. */
#define EXP_NEG_CAPPED(EXP, T, v) EXP((v) > (T)-80 ? -(v) : (T)80)

#define DEFINE_CONV(T, SUFFIX, EXP)                                                            \
static inline T shifted_##SUFFIX(int64_t g, int64_t k, int64_t taps) {                         \
    return (T)(g == 0 ? k - (taps - 1) : (taps - 1) - k);                                      \
}                                                                                              \
                                                                                               \
int64_t bidirectional_conv_fwd_##SUFFIX(                                                       \
    int64_t batch, int64_t length, int64_t dim, int64_t taps, int64_t x_stride,                \
    int64_t d_start, int64_t d_stop, const T *restrict x, const T *restrict w,                 \
    const T *restrict bias, T *restrict out) {                                                 \
    for (int64_t g = 0; g < 2; ++g)                                                            \
        for (int64_t b = 0; b < batch; ++b)                                                    \
            for (int64_t t = 0; t < length; ++t) {                                             \
                T *o = out + ((g * batch + b) * length + t) * dim;                             \
                for (int64_t d = d_start; d < d_stop; ++d) o[d] = bias[g * dim + d];           \
                for (int64_t k = 0; k < taps; ++k) {                                           \
                    int64_t src = t + (int64_t)shifted_##SUFFIX(g, k, taps);                   \
                    if (src < 0 || src >= length) continue;                                    \
                    const T *xr = x + (b * length + src) * x_stride;                           \
                    const T *wk = w + (g * taps + k) * dim;                                    \
                    for (int64_t d = d_start; d < d_stop; ++d) o[d] += wk[d] * xr[d];   \
                }                                                                              \
                for (int64_t d = d_start; d < d_stop; ++d) o[d] = o[d] / ((T)1 + EXP_NEG_CAPPED(EXP, T, o[d])); \
            }                                                                                  \
    return 0;                                                                                  \
}                                                                                              \
                                                                                               \
/* dx, dw, dbias are zeroed by the caller; pre-activations are recomputed. */                 \
int64_t bidirectional_conv_bwd_##SUFFIX(                                                       \
    int64_t batch, int64_t length, int64_t dim, int64_t taps, int64_t x_stride,                \
    int64_t d_start, int64_t d_stop, const T *restrict x, const T *restrict w,                 \
    const T *restrict bias, const T *restrict grad_out, T *restrict dx, T *restrict dw,        \
    T *restrict dbias, T *restrict scratch) {                                                  \
    for (int64_t g = 0; g < 2; ++g)                                                            \
        for (int64_t b = 0; b < batch; ++b)                                                    \
            for (int64_t t = 0; t < length; ++t) {                                             \
                T *pre = scratch;                                                              \
                for (int64_t d = d_start; d < d_stop; ++d) pre[d] = bias[g * dim + d];         \
                for (int64_t k = 0; k < taps; ++k) {                                           \
                    int64_t src = t + (int64_t)shifted_##SUFFIX(g, k, taps);                   \
                    if (src < 0 || src >= length) continue;                                    \
                    const T *xr = x + (b * length + src) * x_stride;                           \
                    const T *wk = w + (g * taps + k) * dim;                                    \
                    for (int64_t d = d_start; d < d_stop; ++d) pre[d] += wk[d] * xr[d]; \
                }                                                                              \
                const T *go = grad_out + ((g * batch + b) * length + t) * dim;                 \
                for (int64_t d = d_start; d < d_stop; ++d) {                                   \
                    T s = (T)1 / ((T)1 + EXP_NEG_CAPPED(EXP, T, pre[d]));                     \
                    pre[d] = go[d] * s * ((T)1 + pre[d] * ((T)1 - s));                         \
                    dbias[g * dim + d] += pre[d];                                              \
                }                                                                              \
                for (int64_t k = 0; k < taps; ++k) {                                           \
                    int64_t src = t + (int64_t)shifted_##SUFFIX(g, k, taps);                   \
                    if (src < 0 || src >= length) continue;                                    \
                    const T *xr = x + (b * length + src) * x_stride;                           \
                    T *dxr = dx + (b * length + src) * dim;                                    \
                    const T *wk = w + (g * taps + k) * dim;                                    \
                    T *dwk = dw + (g * taps + k) * dim;                                        \
                    for (int64_t d = d_start; d < d_stop; ++d) {                               \
                        dxr[d] += wk[d] * pre[d];                                       \
                        dwk[d] += xr[d] * pre[d];                                       \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
    return 0;                                                                                  \
}

DEFINE_CONV(float, f32, expf)
DEFINE_CONV(double, f64, exp)
