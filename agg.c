/* agg.c: the server's aggregation math, in one place: averaging the clients' trainable state (FedIT),
 * FedEx-LoRA's exact residual (as factors or as a dense matrix), VeRA's counterpart, and the
 * aggregation error that shows whether the global model equals the mean of the clients' models.
 * It does no I/O and knows nothing of processes: it works on flat buffers laid out by model.c. */
#include "fedex.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ============================================================================================
 * Methods
 * ============================================================================================ */

static const struct { const char *name, *alias; fx_agg_method m; } methods[] = {
    {"fedex", "ours", FX_AGG_FEDEX},
    {"fedit", "normal", FX_AGG_FEDIT},
    {"ffa", "ffa", FX_AGG_FFA},
    {"fedex-vera", "ours_vera", FX_AGG_FEDEX_VERA},
    {"fedit-vera", "normal_vera", FX_AGG_FEDIT_VERA},
    {"ffa-vera", "ffa_vera", FX_AGG_FFA_VERA},
    {"centralized", "centralised", FX_AGG_CENTRAL},
};

int fx_agg_parse(const char *s, fx_agg_method *m) {
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (!strcmp(s, methods[i].name) || !strcmp(s, methods[i].alias)) { *m = methods[i].m; return 0; }
    fx_seterr("unknown aggregation '%s' (expected fedex, fedit, ffa, fedex-vera, fedit-vera, ffa-vera "
              "or centralized)", s);
    return -1;
}

const char *fx_agg_name(fx_agg_method m) {
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (methods[i].m == m) return methods[i].name;
    return "?";
}

int fx_agg_is_vera(fx_agg_method m) {
    return m == FX_AGG_FEDEX_VERA || m == FX_AGG_FEDIT_VERA || m == FX_AGG_FFA_VERA;
}
int fx_agg_is_exact(fx_agg_method m) { return m == FX_AGG_FEDEX || m == FX_AGG_FEDEX_VERA; }
int fx_agg_freezes(fx_agg_method m) { return m == FX_AGG_FFA || m == FX_AGG_FFA_VERA; }

/* ============================================================================================
 * Averaging (FedIT): out = sum_i w_i x_i, with sum_i w_i = 1
 * ============================================================================================
 * Accumulated in double so that the order of clients hardly matters and a mean of N equal buffers is
 * that buffer, bit for bit. w_i = 1/N (the paper's plain mean) or n_i / sum n (--weighted). */

void fx_agg_mean(float *out, const float *const *x, const double *w, int n, size_t len) {
    #pragma omp parallel for schedule(static)
    for (size_t j = 0; j < len; j++) {
        double acc = 0;
        for (int i = 0; i < n; i++) acc += w[i] * (double)x[i][j];
        out[j] = (float)acc;
    }
}

/* ============================================================================================
 * Each adapter's update dW, dense, in W's own (out, in) orientation
 * ============================================================================================
 * LoRA:  dW = s B A            B (out, r), A (r, in)
 * VeRA:  dW = diag(b) B_l diag(d) A_l,   B_l = vera_B[:out, :], A_l = vera_A[:, :in] */

void fx_delta_w(const fx_model *m, int k, const float *train, double *dW /* (out, in) */) {
    const fx_adapted *ad = &m->ad[k];
    int r = m->a.r, in = ad->in, out = ad->out;
    if (m->a.kind == FX_LORA) {
        const float *A = train + ad->a_off, *B = train + ad->b_off;
        for (int o = 0; o < out; o++) {
            double *row = dW + (size_t)o * in;
            for (int i = 0; i < in; i++) row[i] = 0;
            for (int j = 0; j < r; j++) {
                double bj = (double)m->scale * B[(size_t)o * r + j];
                const float *Aj = A + (size_t)j * in;
                for (int i = 0; i < in; i++) row[i] += bj * Aj[i];
            }
        }
    } else {
        const float *d = train + ad->a_off, *b = train + ad->b_off;
        int in_max = 0;
        for (int q = 0; q < m->nadapted; q++) if (m->ad[q].in > in_max) in_max = m->ad[q].in;
        for (int o = 0; o < out; o++) {
            double *row = dW + (size_t)o * in;
            for (int i = 0; i < in; i++) row[i] = 0;
            for (int j = 0; j < r; j++) {
                double c = (double)b[o] * m->vera_B[(size_t)o * r + j] * d[j];
                const float *Aj = m->vera_A + (size_t)j * in_max;
                for (int i = 0; i < in; i++) row[i] += c * Aj[i];
            }
        }
    }
}

/* ============================================================================================
 * FedEx's exact residual
 * ============================================================================================
 * After averaging, the global model would be W0 + s B̄ Ā, but the mean of the clients' models is
 * W0 + s mean_i(B_i A_i). FedEx-LoRA keeps B̄, Ā and moves the difference into the frozen weight:
 *
 *     W0 <- W0 + R,    R = s ( sum_i w_i B_i A_i  -  B̄ Ā )                             (LoRA)
 *
 * R has rank at most (N+1) r: it is one product of stacked factors,
 *
 *     R = U V,   U = s [ w_1 B_1 | ... | w_N B_N | -B̄ ]  (out, (N+1) r)
 *                V =   [ A_1 ; ... ; A_N ; Ā ]             ((N+1) r, in)
 *
 * which is what travels (and is rebuilt by each receiver with one GEMM) in --residual factored.
 * For VeRA, dW_i = diag(b_i) B diag(d_i) A with A, B shared, so the difference factors through A:
 *
 *     R = M A,   M[o][j] = B[o][j] ( sum_i w_i b_i[o] d_i[j]  -  b̄[o] d̄[j] )              (VeRA)
 *
 * with rank at most r and only M (out, r) to send, as A is the shared frozen projection (no scale).
 * Returns q, the inner dimension of U V. */

int fx_agg_residual_factors(const fx_model *m, int k, const float *const *clients, const double *w,
                            int n, const float *global, float *U /* (out, q) */, float *V /* (q, in) */) {
    const fx_adapted *ad = &m->ad[k];
    int r = m->a.r, in = ad->in, out = ad->out;
    if (m->a.kind == FX_LORA) {
        int q = (n + 1) * r;
        for (int i = 0; i <= n; i++) {
            const float *src = i < n ? clients[i] : global;
            double f = i < n ? (double)m->scale * w[i] : -(double)m->scale;
            const float *B = src + ad->b_off, *A = src + ad->a_off;
            for (int o = 0; o < out; o++)
                for (int j = 0; j < r; j++) U[(size_t)o * q + i * r + j] = (float)(f * B[(size_t)o * r + j]);
            memcpy(V + (size_t)i * r * in, A, sizeof(float) * (size_t)r * in);
        }
        return q;
    }
    int in_max = 0;
    for (int p = 0; p < m->nadapted; p++) if (m->ad[p].in > in_max) in_max = m->ad[p].in;
    const float *db = global + ad->a_off, *bb = global + ad->b_off;
    for (int o = 0; o < out; o++)
        for (int j = 0; j < r; j++) {
            double acc = 0;
            for (int i = 0; i < n; i++)
                acc += w[i] * (double)clients[i][ad->b_off + o] * clients[i][ad->a_off + j];
            acc -= (double)bb[o] * db[j];
            U[(size_t)o * r + j] = (float)(m->vera_B[(size_t)o * r + j] * acc);
        }
    for (int j = 0; j < r; j++) memcpy(V + (size_t)j * in, m->vera_A + (size_t)j * in_max, sizeof(float) * in);
    return r;
}

/* The same residual computed densely, term by term: R = sum_i w_i dW_i - dW(global), each dW an
 * fp32 product. It sends out x in floats instead of (out + in) q; both are exact up to rounding. */
void fx_agg_residual_dense(const fx_model *m, int k, const float *const *clients, const double *w,
                           int n, const float *global, float *R /* (out, in) */, float *tmp /* (out, r) */) {
    const fx_adapted *ad = &m->ad[k];
    int r = m->a.r, in = ad->in, out = ad->out;
    int in_max = 0;
    for (int p = 0; p < m->nadapted; p++) if (m->ad[p].in > in_max) in_max = m->ad[p].in;
    for (int i = 0; i <= n; i++) {
        const float *src = i < n ? clients[i] : global;
        double f = i < n ? w[i] : -1.0;
        if (m->a.kind == FX_LORA) {
            /* R += f s B A */
            fx_matmul(0, 0, out, in, r, (float)(f * m->scale), src + ad->b_off, r, src + ad->a_off, in,
                      i == 0 ? 0.0f : 1.0f, R, in);
        } else {
            /* R += f diag(b) B diag(d) A: scale B's rows by b and columns by d, then one product */
            const float *d = src + ad->a_off, *b = src + ad->b_off;
            for (int o = 0; o < out; o++)
                for (int j = 0; j < r; j++) tmp[(size_t)o * r + j] = b[o] * m->vera_B[(size_t)o * r + j] * d[j];
            fx_matmul(0, 0, out, in, r, (float)f, tmp, r, m->vera_A, in_max, i == 0 ? 0.0f : 1.0f, R, in);
        }
    }
}

/* ============================================================================================
 * Aggregation error
 * ============================================================================================
 * For an adapted layer whose frozen weight is W0 + R (R the residual accumulated so far), with
 * W_i = W0 + R_old + dW_i the clients' models, W_prev = W0 + R_old + dW(previous global) the model they
 * started from, and W_global = W0 + R_new + dW(global) the server's new model:
 *
 *     err = || W_global - sum_i w_i W_i ||_F  /  || sum_i w_i W_i - W_prev ||_F
 *         = || (R_new - R_old) + dW(global) - sum_i w_i dW_i ||_F  /  || sum_i w_i dW_i - dW(prev) ||_F
 *
 * the deviation from the exact mean, relative to how far the round moved the model. Computed in double
 * from the fp32 values the server stores (so the fp32 rounding of R and of the adapters counts). FedEx
 * sits at float rounding; FedIT's is the paper's deviation (its Figure 2). */

double fx_agg_error(const fx_model *m, int k, const float *R_old, const float *R_new,
                    const float *const *clients, const double *w, int n, const float *global,
                    const float *prev_global, double *work /* 2 x (out, in) */) {
    const fx_adapted *ad = &m->ad[k];
    size_t len = (size_t)ad->out * ad->in;
    double *mean = work, *tmp = work + len;
    for (size_t j = 0; j < len; j++) mean[j] = 0;
    for (int i = 0; i < n; i++) {
        fx_delta_w(m, k, clients[i], tmp);
        for (size_t j = 0; j < len; j++) mean[j] += w[i] * tmp[j];
    }
    double num = 0, den = 0;
    fx_delta_w(m, k, global, tmp);
    for (size_t j = 0; j < len; j++) {
        double e = ((double)R_new[j] - (double)R_old[j]) + tmp[j] - mean[j];
        num += e * e;
    }
    fx_delta_w(m, k, prev_global, tmp);
    for (size_t j = 0; j < len; j++) {
        double e = mean[j] - tmp[j];
        den += e * e;
    }
    if (den == 0) return num == 0 ? 0.0 : INFINITY;
    return sqrt(num / den);
}
