/* agg.c: the aggregation math, in one place: averaging the clients' trainable state (FedIT), FedEx-LoRA's
 * exact residual (as factors or as a dense matrix), VeRA's counterpart, the aggregation error that shows
 * whether the global model equals the mean of the clients' models, and the residual's one owner (its
 * message, its accumulation, the frozen weight every party computes with). It does no I/O and knows
 * nothing of processes: it works on flat buffers laid out by model.c. */
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
int fx_agg_is_sorf(fx_agg_method m) { (void)m; return 0; }
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
        int in_max = m->vera_in;
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
 * W0 + s sum_i w_i B_i A_i. FedEx-LoRA keeps B̄, Ā and moves the difference into the frozen weight:
 *
 *     R = s ( sum_i w_i B_i A_i  -  B̄ Ā )                                              (LoRA)
 *
 * Written as it stands, that is a difference of two products up to 10^4 times larger than R itself,
 * and fp32 loses R's digits. With β = sum_i w_i B_i and α = sum_i w_i A_i (exact; B̄ = fl(β), Ā = fl(α)
 * are the stored means) and sum_i w_i = 1, the same matrix is
 *
 *     R = s ( sum_i w_i (B_i - B̄)(A_i - Ā)  +  (β - B̄) Ā  +  B̄ (α - Ā) )
 *
 * whose terms are the size of R (the last two only carry B̄ and Ā's own rounding). It has rank at most
 * (N+2) r and is one product of stacked factors,
 *
 *     R = U V,   U = s [ w_1 (B_1 - B̄) | ... | w_N (B_N - B̄) | β - B̄ | B̄ ]   (out, (N+2) r)
 *                V =   [ A_1 - Ā ; ... ; A_N - Ā ; Ā ; α - Ā ]                   ((N+2) r, in)
 *
 * which is what travels (and is rebuilt by each receiver with one GEMM) in --residual factored.
 * For VeRA, dW_i = diag(b_i) B diag(d_i) A with A, B shared, so the difference factors through A:
 *
 *     R = M A,   M[o][j] = B[o][j] ( sum_i w_i b_i[o] d_i[j]  -  b̄[o] d̄[j] )              (VeRA)
 *
 * with rank at most r and only M (out, r) to send, as A is the shared frozen projection (no scale);
 * M is accumulated in double. Returns q, the inner dimension of U V. For VeRA, V may be NULL: it is the
 * shared projection, which every receiver holds already. */

int fx_agg_residual_rank(const fx_model *m, int n) { return m->a.kind == FX_LORA ? (n + 2) * m->a.r : m->a.r; }

int fx_agg_residual_factors(const fx_model *m, int k, const float *const *clients, const double *w,
                            int n, const float *global, float *U /* (out, q) */, float *V /* (q, in) */) {
    const fx_adapted *ad = &m->ad[k];
    int r = m->a.r, in = ad->in, out = ad->out;
    if (m->a.kind == FX_LORA) {
        int q = fx_agg_residual_rank(m, n);
        double s = m->scale;
        const float *Bb = global + ad->b_off, *Ab = global + ad->a_off;
        for (int o = 0; o < out; o++)
            for (int j = 0; j < r; j++) {
                size_t e = (size_t)o * r + j;
                float *u = U + (size_t)o * q;
                double beta = 0;
                for (int i = 0; i < n; i++) {
                    double d = (double)clients[i][ad->b_off + e] - Bb[e];
                    u[i * r + j] = (float)(s * w[i] * d);
                    beta += w[i] * clients[i][ad->b_off + e];
                }
                u[n * r + j] = (float)(s * (beta - Bb[e]));
                u[(n + 1) * r + j] = (float)(s * Bb[e]);
            }
        for (int j = 0; j < r; j++)
            for (int x = 0; x < in; x++) {
                size_t e = (size_t)j * in + x;
                double alpha = 0;
                for (int i = 0; i < n; i++) {
                    V[(size_t)(i * r + j) * in + x] = (float)((double)clients[i][ad->a_off + e] - Ab[e]);
                    alpha += w[i] * clients[i][ad->a_off + e];
                }
                V[(size_t)(n * r + j) * in + x] = Ab[e];
                V[(size_t)((n + 1) * r + j) * in + x] = (float)(alpha - Ab[e]);
            }
        return q;
    }
    int in_max = m->vera_in;
    const float *db = global + ad->a_off, *bb = global + ad->b_off;
    for (int o = 0; o < out; o++)
        for (int j = 0; j < r; j++) {
            double acc = 0;
            for (int i = 0; i < n; i++)
                acc += w[i] * (double)clients[i][ad->b_off + o] * clients[i][ad->a_off + j];
            acc -= (double)bb[o] * db[j];
            U[(size_t)o * r + j] = (float)(m->vera_B[(size_t)o * r + j] * acc);
        }
    if (V) for (int j = 0; j < r; j++) memcpy(V + (size_t)j * in, m->vera_A + (size_t)j * in_max, sizeof(float) * in);
    return fx_agg_residual_rank(m, n);
}

/* ============================================================================================
 * The residual's one owner: what travels, how it accumulates, and the frozen weight
 * ============================================================================================
 * Every party that computes with the global model (the server, every client on either backend, a
 * resumed run, evaluation, export) uses the same frozen weight of each adapted layer,
 *
 *     W = fl(W0 + R_acc),      R_acc = fl(... fl(fl(R_1) + R_2) ... + R_t)
 *
 * with W0 the checkpoint's weight, never modified, and R_acc the residual accumulated in its own fp32
 * buffer (rounding relative to |R|, not |W0|). Each round's R_t travels as a message (factors or dense)
 * that every receiver accumulates with the same call, fx_residual_apply, so the sums are rounded the same
 * way everywhere and the frozen weights agree bit for bit (fx_matmul's results do not depend on the
 * thread count). Folding R_t into a device copy of W0 instead would round relative to |W0| every round
 * and drift apart from the server. */

void fx_frozen_weight(float *W, const float *W0, const float *R, size_t n) {
    for (size_t j = 0; j < n; j++) W[j] = W0[j] + R[j];
}

int fx_residual_init(fx_residual *r, const fx_model *m) {
    memset(r, 0, sizeof *r);
    r->n = m->nadapted;
    r->off = fx_calloc((size_t)r->n + 1, sizeof(size_t));
    for (int k = 0; k < r->n; k++) r->off[k + 1] = r->off[k] + (size_t)m->ad[k].out * m->ad[k].in;
    size_t len = r->off[r->n] ? r->off[r->n] : 1;
    r->w0 = fx_malloc(sizeof(float) * len);
    r->acc = fx_calloc(len, sizeof(float));
    for (int k = 0; k < r->n; k++)
        memcpy(r->w0 + r->off[k], m->base.data + m->ad[k].w_off, sizeof(float) * (r->off[k + 1] - r->off[k]));
    return 0;
}

void fx_residual_copy(fx_residual *dst, const fx_residual *src) {
    size_t len = src->off[src->n];
    *dst = *src;
    dst->off = fx_malloc(sizeof(size_t) * ((size_t)src->n + 1));
    memcpy(dst->off, src->off, sizeof(size_t) * ((size_t)src->n + 1));
    dst->w0 = fx_malloc(sizeof(float) * (len ? len : 1));
    dst->acc = fx_malloc(sizeof(float) * (len ? len : 1));
    memcpy(dst->w0, src->w0, sizeof(float) * len);
    memcpy(dst->acc, src->acc, sizeof(float) * len);
}

void fx_residual_free(fx_residual *r) {
    free(r->off); free(r->w0); free(r->acc);
    memset(r, 0, sizeof *r);
}

void fx_residual_frozen(const fx_residual *r, int k, float *W) {
    fx_frozen_weight(W, r->w0 + r->off[k], r->acc + r->off[k], r->off[k + 1] - r->off[k]);
}

void fx_residual_set_frozen(const fx_residual *r, fx_model *m) {
    for (int k = 0; k < r->n; k++) fx_residual_frozen(r, k, m->base.data + m->ad[k].w_off);
}

/* Floats of layer K's payload: U (out, q) and V (q, in) for LoRA, U alone for VeRA (V is the shared
 * projection), R (out, in) when dense (q = 0). */
static size_t payload_len(const fx_model *m, int k, int q) {
    size_t out = (size_t)m->ad[k].out, in = (size_t)m->ad[k].in;
    if (q == 0) return out * in;
    return m->a.kind == FX_LORA ? (out + in) * (size_t)q : out * (size_t)q;
}

size_t fx_residual_msg_capacity(const fx_model *m, int nclients) {
    size_t n = 0;
    int q = fx_agg_residual_rank(m, nclients);
    for (int k = 0; k < m->nadapted; k++) {
        size_t f = payload_len(m, k, q), d = payload_len(m, k, 0);
        n += f > d ? f : d;
    }
    return n;
}

size_t fx_residual_msg_bytes(const fx_model *m, const fx_residual_msg *msg) {
    size_t n = 0;
    for (int k = 0; k < m->nadapted; k++) n += payload_len(m, k, msg->q);
    return sizeof *msg + sizeof(float) * n;
}

void fx_residual_make(const fx_model *m, int dense, const float *const *clients, const double *w, int n,
                      const float *global, int round, fx_residual_msg *msg, float *payload, float *scratch) {
    int q = fx_agg_residual_rank(m, n);
    float *p = payload;
    for (int k = 0; k < m->nadapted; k++) {
        const fx_adapted *ad = &m->ad[k];
        float *U = dense ? scratch : p;
        float *V = m->a.kind == FX_LORA ? U + (size_t)ad->out * q : NULL;
        fx_agg_residual_factors(m, k, clients, w, n, global, U, V);
        if (dense) {
            const float *Vm = V ? V : m->vera_A;
            fx_matmul(0, 0, ad->out, ad->in, q, 1.0f, U, q, Vm, V ? ad->in : m->vera_in, 0.0f, p, ad->in);
        }
        p += payload_len(m, k, dense ? 0 : q);
    }
    msg->round = round;
    msg->q = dense ? 0 : q;
}

/* The VeRA fork's inexact variants multiply the residual by a factor (its lr, or alpha/r): R (dense) or U
 * (factored; V is the shared projection) times FACTOR. */
void fx_residual_scale(const fx_model *m, const fx_residual_msg *msg, float *payload, float factor) {
    if (factor == 1.0f || m->a.kind == FX_LORA) return;
    size_t n = 0;
    for (int k = 0; k < m->nadapted; k++) n += payload_len(m, k, msg->q);
    for (size_t j = 0; j < n; j++) payload[j] *= factor;
}

void fx_residual_apply(fx_residual *r, const fx_model *m, const fx_residual_msg *msg, const float *payload) {
    const float *p = payload;
    int q = msg->q;
    for (int k = 0; k < m->nadapted; k++) {
        const fx_adapted *ad = &m->ad[k];
        float *acc = r->acc + r->off[k];
        if (q == 0) {
            size_t len = (size_t)ad->out * ad->in;
            for (size_t j = 0; j < len; j++) acc[j] += p[j];
        } else {
            const float *V = m->a.kind == FX_LORA ? p + (size_t)ad->out * q : m->vera_A;
            int ldv = m->a.kind == FX_LORA ? ad->in : m->vera_in;
            fx_matmul(0, 0, ad->out, ad->in, q, 1.0f, p, q, V, ldv, 1.0f, acc, ad->in);
        }
        p += payload_len(m, k, q);
    }
    r->round = msg->round;
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
