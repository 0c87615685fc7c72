/* Body of the fused CPU selective scan for one element type, included by
 * selective_scan.c once per type with T (element type), SUFFIX and EXP defined.
 *
 * Vectorised across channels: a block of W adjacent channels of one batch row walks
 * the sequence together, its W x N states in registers. The loads of u, dt, y are
 * contiguous W-vectors, exp(dt * A) is W lanes wide, and nothing is reduced across
 * lanes in the forward pass. Blocks are W = 16 wide; a slice's leftover channels run
 * as blocks of one. */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SUFFIX)

static inline __attribute__((always_inline)) void FN(fwd_block)(
    const int64_t W, int64_t b, int64_t d0, int64_t length, int64_t dim, int64_t nstate,
    int reverse, const T *restrict u, const T *restrict dt, const T *restrict A_g,
    const T *restrict Bm, const T *restrict Cm, const T *restrict skip_g,
    const T *restrict h0, T *restrict y, T *restrict h_last, T *restrict h, T *restrict a) {
    for (int64_t n = 0; n < nstate; ++n)
        for (int64_t j = 0; j < W; ++j) {
            a[n * W + j] = A_g[(d0 + j) * nstate + n];
            h[n * W + j] = h0 ? h0[(b * dim + d0 + j) * nstate + n] : (T)0;
        }
    T skip[16];
    for (int64_t j = 0; j < W; ++j) skip[j] = skip_g ? skip_g[d0 + j] : (T)0;
    for (int64_t s = 0; s < length; ++s) {
        int64_t t = reverse ? length - 1 - s : s;
        int64_t at = (b * length + t) * dim + d0;
        const T *b_t = Bm + (b * length + t) * nstate, *c_t = Cm + (b * length + t) * nstate;
        T step[16], x[16], drive[16], acc[16];
        for (int64_t j = 0; j < W; ++j) {
            step[j] = dt[at + j];
            x[j] = u[at + j];
            drive[j] = step[j] * x[j];
            acc[j] = skip[j] * x[j];
        }
        for (int64_t n = 0; n < nstate; ++n) {
            T bn = b_t[n], cn = c_t[n];
            T *hn = h + n * W;
            const T *an = a + n * W;
            for (int64_t j = 0; j < W; ++j) {
                hn[j] = EXP(step[j] * an[j]) * hn[j] + drive[j] * bn;
                acc[j] += cn * hn[j];
            }
        }
        for (int64_t j = 0; j < W; ++j) y[at + j] = acc[j];
    }
    if (h_last)
        for (int64_t n = 0; n < nstate; ++n)
            for (int64_t j = 0; j < W; ++j) h_last[(b * dim + d0 + j) * nstate + n] = h[n * W + j];
}

/* states[s] holds the W x N states before step s; decay[s] = exp(dt_s * A). The
 * channel block owns its channels of du, ddt, dA, dD, dh0. dB and dC are (B, L, N, 16)
 * buffers of the slice: lane j gathers channel d0 + j of every block, so no sum
 * across lanes is taken here (the caller sums over slices and lanes). */
static inline __attribute__((always_inline)) void FN(bwd_block)(
    const int64_t W, int64_t b, int64_t d0, int64_t length, int64_t dim, int64_t nstate,
    int reverse, const T *restrict u, const T *restrict dt, const T *restrict A_g,
    const T *restrict Bm, const T *restrict Cm, const T *restrict skip_g,
    const T *restrict h0, const T *restrict gy, const T *restrict g_last, T *restrict du,
    T *restrict ddt, T *restrict dA_g, T *restrict dD_g, T *restrict dB, T *restrict dC,
    T *restrict dh0, T *restrict states, T *restrict decay, T *restrict g, T *restrict a,
    T *restrict da) {
    const int64_t stride = nstate * W;
    for (int64_t n = 0; n < nstate; ++n)
        for (int64_t j = 0; j < W; ++j) {
            a[n * W + j] = A_g[(d0 + j) * nstate + n];
            states[n * W + j] = h0 ? h0[(b * dim + d0 + j) * nstate + n] : (T)0;
            g[n * W + j] = g_last ? g_last[(b * dim + d0 + j) * nstate + n] : (T)0;
            da[n * W + j] = 0;
        }
    T skip[16], grad_skip[16];
    for (int64_t j = 0; j < W; ++j) {
        skip[j] = skip_g ? skip_g[d0 + j] : (T)0;
        grad_skip[j] = 0;
    }
    for (int64_t s = 0; s < length; ++s) {
        int64_t t = reverse ? length - 1 - s : s;
        int64_t at = (b * length + t) * dim + d0;
        const T *b_t = Bm + (b * length + t) * nstate;
        T step[16], drive[16];
        for (int64_t j = 0; j < W; ++j) {
            step[j] = dt[at + j];
            drive[j] = step[j] * u[at + j];
        }
        const T *prev = states + s * stride;
        T *next = states + (s + 1) * stride, *dec = decay + s * stride;
        for (int64_t n = 0; n < nstate; ++n) {
            T bn = b_t[n];
            for (int64_t j = 0; j < W; ++j) {
                dec[n * W + j] = EXP(step[j] * a[n * W + j]);
                next[n * W + j] = dec[n * W + j] * prev[n * W + j] + drive[j] * bn;
            }
        }
    }
    for (int64_t s = length - 1; s >= 0; --s) {
        int64_t t = reverse ? length - 1 - s : s;
        int64_t at = (b * length + t) * dim + d0;
        const T *b_t = Bm + (b * length + t) * nstate, *c_t = Cm + (b * length + t) * nstate;
        T *db_t = dB + (b * length + t) * nstate * 16, *dc_t = dC + (b * length + t) * nstate * 16;
        const T *prev = states + s * stride, *cur = states + (s + 1) * stride, *dec = decay + s * stride;
        T step[16], x[16], grad_y[16], grad_dt[16], grad_u[16];
        for (int64_t j = 0; j < W; ++j) {
            step[j] = dt[at + j];
            x[j] = u[at + j];
            grad_y[j] = gy[at + j];
            grad_dt[j] = 0;
            grad_u[j] = 0;
        }
        for (int64_t n = 0; n < nstate; ++n) {
            T bn = b_t[n], cn = c_t[n];
            T *gn = g + n * W, *dan = da + n * W, *dbn = db_t + n * 16, *dcn = dc_t + n * 16;
            const T *an = a + n * W;
            for (int64_t j = 0; j < W; ++j) {
                T gh = gn[j] + grad_y[j] * cn;
                T g_decay = gh * prev[n * W + j] * dec[n * W + j];
                dcn[j] += grad_y[j] * cur[n * W + j];
                dbn[j] += gh * step[j] * x[j];
                dan[j] += g_decay * step[j];
                grad_dt[j] += g_decay * an[j] + gh * bn * x[j];
                grad_u[j] += gh * bn;
                gn[j] = gh * dec[n * W + j];
            }
        }
        for (int64_t j = 0; j < W; ++j) {
            du[at + j] = grad_u[j] * step[j] + grad_y[j] * skip[j];
            ddt[at + j] = grad_dt[j];
            grad_skip[j] += grad_y[j] * x[j];
        }
    }
    for (int64_t n = 0; n < nstate; ++n)
        for (int64_t j = 0; j < W; ++j) {
            dA_g[(d0 + j) * nstate + n] += da[n * W + j];
            if (dh0) dh0[(b * dim + d0 + j) * nstate + n] = g[n * W + j];
        }
    if (dD_g)
        for (int64_t j = 0; j < W; ++j) dD_g[d0 + j] += grad_skip[j];
}

int64_t FN(selective_scan_fwd)(
    int64_t batch, int64_t length, int64_t dim, int64_t nstate, int64_t d_start, int64_t d_stop,
    int64_t groups, int64_t reverse_mask, const T *u, const T *dt, const T *A, const T *Bm,
    const T *Cm, const T *Dskip, const T *h0, T *y, T *h_last) {
    if (groups < 1 || batch % groups) return -2;
    T *scratch = malloc(sizeof(T) * 2 * 16 * (nstate > 0 ? nstate : 1));
    if (!scratch) return -1;
    T *h = scratch, *a = scratch + 16 * nstate;
    for (int64_t b = 0; b < batch; ++b) {
        int64_t group = b / (batch / groups);
        int reverse = (int)((reverse_mask >> group) & 1);
        const T *A_g = A + group * dim * nstate, *skip_g = Dskip ? Dskip + group * dim : NULL;
        int64_t d = d_start;
        for (; d + 16 <= d_stop; d += 16)
            FN(fwd_block)(16, b, d, length, dim, nstate, reverse, u, dt, A_g, Bm, Cm, skip_g, h0, y,
                          h_last, h, a);
        for (; d < d_stop; ++d)
            FN(fwd_block)(1, b, d, length, dim, nstate, reverse, u, dt, A_g, Bm, Cm, skip_g, h0, y,
                          h_last, h, a);
    }
    free(scratch);
    return 0;
}

int64_t FN(selective_scan_bwd)(
    int64_t batch, int64_t length, int64_t dim, int64_t nstate, int64_t d_start, int64_t d_stop,
    int64_t groups, int64_t reverse_mask, const T *u, const T *dt, const T *A, const T *Bm,
    const T *Cm, const T *Dskip, const T *h0, const T *gy, const T *g_last, T *du, T *ddt,
    T *dA, T *dD, T *dB, T *dC, T *dh0) {
    if (groups < 1 || batch % groups) return -2;
    int64_t block = 16 * (nstate > 0 ? nstate : 1);
    T *states = malloc(sizeof(T) * (length + 1) * block);
    T *decay = malloc(sizeof(T) * (length > 0 ? length : 1) * block);
    T *small = malloc(sizeof(T) * 3 * block);
    if (!states || !decay || !small) { free(states); free(decay); free(small); return -1; }
    for (int64_t b = 0; b < batch; ++b) {
        int64_t group = b / (batch / groups);
        int reverse = (int)((reverse_mask >> group) & 1);
        const T *A_g = A + group * dim * nstate, *skip_g = Dskip ? Dskip + group * dim : NULL;
        T *dA_g = dA + group * dim * nstate, *dD_g = dD ? dD + group * dim : NULL;
        int64_t d = d_start;
        for (; d + 16 <= d_stop; d += 16)
            FN(bwd_block)(16, b, d, length, dim, nstate, reverse, u, dt, A_g, Bm, Cm, skip_g, h0,
                          gy, g_last, du, ddt, dA_g, dD_g, dB, dC, dh0, states, decay, small,
                          small + block, small + 2 * block);
        for (; d < d_stop; ++d)
            FN(bwd_block)(1, b, d, length, dim, nstate, reverse, u, dt, A_g, Bm, Cm, skip_g, h0,
                          gy, g_last, du, ddt, dA_g, dD_g, dB, dC, dh0, states, decay, small,
                          small + block, small + 2 * block);
    }
    free(states); free(decay); free(small);
    return 0;
}

#undef FN
#undef CAT
#undef CAT_
