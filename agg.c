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
    {"sorf-vera", "sorf_vera", FX_AGG_SORF_VERA},
    {"fedex-sorf-vera", "ours_sorf_vera", FX_AGG_FEDEX_SORF_VERA},
};

int fx_agg_parse(const char *s, fx_agg_method *m) {
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (!strcmp(s, methods[i].name) || !strcmp(s, methods[i].alias)) { *m = methods[i].m; return 0; }
    fx_seterr("unknown aggregation '%s' (expected fedex, fedit, ffa, fedex-vera, fedit-vera, ffa-vera, "
              "sorf-vera, fedex-sorf-vera or centralized)", s);
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
int fx_agg_is_sorf(fx_agg_method m) { return m == FX_AGG_SORF_VERA || m == FX_AGG_FEDEX_SORF_VERA; }
int fx_agg_is_exact(fx_agg_method m) { return m == FX_AGG_FEDEX || m == FX_AGG_FEDEX_VERA || m == FX_AGG_FEDEX_SORF_VERA; }
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
    if (m->a.kind == FX_SORF) { fx_sorf_delta_w(m, k, train, dW); return; } /* S Gamma B_l Lambda A_l */
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
 * M is accumulated in double. SORF-VeRA (dW_i = S Gamma(b) B Lambda_i A, b shared in a round)
 * factors the same way, with the server's refit (b', Lambda') in place of the means (sorf.c):
 *
 *     R = M A,   M = S Gamma(b) B sum_i w_i Lambda_i  -  S Gamma(b') B Lambda'          (SORF-VeRA)
 *
 * which also carries the change of Gamma. Returns q, the inner dimension of U V. For VeRA, V may be NULL: it is the
 * shared projection, which every receiver holds already. */

int fx_agg_residual_rank(const fx_model *m, int n) { return m->a.kind == FX_LORA ? (n + 2) * m->a.r : m->a.r; }

/* The factors above in double, before their rounding to fp32: U (out, q) and, for LoRA, V (q, in); VeRA's
 * U is M (out, r) and its V the shared projection. The fp32 factors that travel are these, rounded once;
 * the aggregation error compares the two. */
static void factors_d(const fx_model *m, int k, const float *const *clients, const double *w, int n,
                      const float *global, double *U, double *V) {
    const fx_adapted *ad = &m->ad[k];
    int r = m->a.r, in = ad->in, out = ad->out;
    if (m->a.kind == FX_LORA) {
        int q = fx_agg_residual_rank(m, n);
        double s = m->scale;
        const float *Bb = global + ad->b_off, *Ab = global + ad->a_off;
        for (int o = 0; o < out; o++)
            for (int j = 0; j < r; j++) {
                size_t e = (size_t)o * r + j;
                double *u = U + (size_t)o * q;
                double beta = 0;
                for (int i = 0; i < n; i++) {
                    double d = (double)clients[i][ad->b_off + e] - Bb[e];
                    u[i * r + j] = s * w[i] * d;
                    beta += w[i] * clients[i][ad->b_off + e];
                }
                u[n * r + j] = s * (beta - Bb[e]);
                u[(n + 1) * r + j] = s * Bb[e];
            }
        for (int j = 0; j < r; j++)
            for (int x = 0; x < in; x++) {
                size_t e = (size_t)j * in + x;
                double alpha = 0;
                for (int i = 0; i < n; i++) {
                    V[(size_t)(i * r + j) * in + x] = (double)clients[i][ad->a_off + e] - Ab[e];
                    alpha += w[i] * clients[i][ad->a_off + e];
                }
                V[(size_t)(n * r + j) * in + x] = Ab[e];
                V[(size_t)((n + 1) * r + j) * in + x] = alpha - Ab[e];
            }
        return;
    }
    if (m->a.kind == FX_SORF) { fx_sorf_residual_d(m, k, clients, w, n, global, U); return; } /* sorf.c */
    const float *db = global + ad->a_off, *bb = global + ad->b_off;
    for (int o = 0; o < out; o++)
        for (int j = 0; j < r; j++) {
            double acc = 0;
            for (int i = 0; i < n; i++)
                acc += w[i] * (double)clients[i][ad->b_off + o] * clients[i][ad->a_off + j];
            acc -= (double)bb[o] * db[j];
            U[(size_t)o * r + j] = m->vera_B[(size_t)o * r + j] * acc;
        }
}

int fx_agg_residual_factors(const fx_model *m, int k, const float *const *clients, const double *w,
                            int n, const float *global, float *U /* (out, q) */, float *V /* (q, in) */) {
    const fx_adapted *ad = &m->ad[k];
    int in = ad->in, out = ad->out, q = fx_agg_residual_rank(m, n), lora = m->a.kind == FX_LORA;
    size_t nu = (size_t)out * q, nv = lora ? (size_t)q * in : 0;
    double *Ud = fx_malloc(sizeof(double) * (nu + nv + 1)), *Vd = Ud + nu;
    factors_d(m, k, clients, w, n, global, Ud, Vd);
    for (size_t j = 0; j < nu; j++) U[j] = (float)Ud[j];
    if (lora) for (size_t j = 0; j < nv; j++) V[j] = (float)Vd[j];
    else if (V)
        for (int j = 0; j < q; j++) memcpy(V + (size_t)j * in, m->vera_A + (size_t)j * m->vera_in, sizeof(float) * in);
    free(Ud);
    return q;
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
/* --precision bf16: the same fp32 sum, then rounded once to bf16. R_acc itself is never rounded, so the
 * frozen weight is within half a bf16 ulp of fl(W0 + R_acc) every round and the error does not grow. */
void fx_frozen_weight_bf16(uint16_t *W, const float *W0, const float *R, size_t n) {
    for (size_t j = 0; j < n; j++) W[j] = fx_bf16_round(W0[j] + R[j]);
}

int fx_residual_init(fx_residual *r, const fx_model *m) {
    memset(r, 0, sizeof *r);
    r->n = m->nadapted;
    r->off = fx_calloc((size_t)r->n + 1, sizeof(size_t));
    for (int k = 0; k < r->n; k++) r->off[k + 1] = r->off[k] + (size_t)m->ad[k].out * m->ad[k].in;
    size_t len = r->off[r->n] ? r->off[r->n] : 1;
    r->w0 = fx_malloc(sizeof(float) * len);
    r->acc = fx_calloc(len, sizeof(float));
    for (int k = 0; k < r->n; k++) fx_base_read(m, m->ad[k].w_off, r->off[k + 1] - r->off[k], r->w0 + r->off[k]);
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
    for (int k = 0; k < r->n; k++) {
        if (m->base.bf)
            fx_frozen_weight_bf16(m->base.bf + m->ad[k].w_off, r->w0 + r->off[k], r->acc + r->off[k],
                                  r->off[k + 1] - r->off[k]);
        else fx_residual_frozen(r, k, m->base.data + m->ad[k].w_off);
    }
}

/* Floats of layer K's payload: U (out, q) and V (q, in) for LoRA, U alone for VeRA (V is the shared
 * projection), R (out, in) when dense (q = 0). */
static size_t payload_len(const fx_model *m, int k, int q) {
    size_t out = (size_t)m->ad[k].out, in = (size_t)m->ad[k].in;
    if (q == 0) return out * in;
    return m->a.kind == FX_LORA ? (out + in) * (size_t)q : out * (size_t)q;
}

/* Factors of rank q outgrow the dense matrix once (out + in) q > out in (LoRA; VeRA: out q > out in), as
 * happens with many clients: at roberta-base's 768 x 768 with r 64, from 4 clients on. FX_RESIDUAL_AUTO
 * sends each layer in the smaller form, which every receiver works out from the shapes alone. */
int fx_residual_layer_dense(const fx_model *m, int k, int form, int q) {
    if (form == FX_RESIDUAL_DENSE || q == 0) return 1;
    if (form == FX_RESIDUAL_FACTORED) return 0;
    return payload_len(m, k, 0) <= payload_len(m, k, q);
}

/* The inner dimension layer K's payload has in MSG: 0 where it travels dense. */
static int msg_layer_q(const fx_model *m, int k, const fx_residual_msg *msg) {
    return fx_residual_layer_dense(m, k, msg->form, msg->q) ? 0 : msg->q;
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
    for (int k = 0; k < m->nadapted; k++) n += payload_len(m, k, msg_layer_q(m, k, msg));
    return sizeof *msg + sizeof(float) * n;
}

int fx_residual_form_parse(const char *s, int *form) {
    if (!strcmp(s, "auto")) *form = FX_RESIDUAL_AUTO;
    else if (!strcmp(s, "factored")) *form = FX_RESIDUAL_FACTORED;
    else if (!strcmp(s, "dense")) *form = FX_RESIDUAL_DENSE;
    else { fx_seterr("--residual must be auto, factored or dense, not '%s'", s); return -1; }
    return 0;
}

void fx_residual_make(const fx_model *m, int form, const float *const *clients, const double *w, int n,
                      const float *global, int round, fx_residual_msg *msg, float *payload, float *scratch) {
    int q = fx_agg_residual_rank(m, n);
    msg->round = round;
    msg->q = form == FX_RESIDUAL_DENSE ? 0 : q;
    msg->form = form;
    float *p = payload;
    for (int k = 0; k < m->nadapted; k++) {
        const fx_adapted *ad = &m->ad[k];
        int dense = msg_layer_q(m, k, msg) == 0;
        float *U = dense ? scratch : p;
        float *V = m->a.kind == FX_LORA ? U + (size_t)ad->out * q : NULL;
        fx_agg_residual_factors(m, k, clients, w, n, global, U, V);
        if (dense) {
            const float *Vm = V ? V : m->vera_A;
            fx_matmul(0, 0, ad->out, ad->in, q, 1.0f, U, q, Vm, V ? ad->in : m->vera_in, 0.0f, p, ad->in);
        }
        p += payload_len(m, k, dense ? 0 : q);
    }
}

/* The VeRA fork's inexact variants multiply the residual by a factor (its lr, or alpha/r): R (dense) or U
 * (factored; V is the shared projection) times FACTOR. */
void fx_residual_scale(const fx_model *m, const fx_residual_msg *msg, float *payload, float factor) {
    if (factor == 1.0f || m->a.kind == FX_LORA) return;
    size_t n = 0;
    for (int k = 0; k < m->nadapted; k++) n += payload_len(m, k, msg_layer_q(m, k, msg));
    for (size_t j = 0; j < n; j++) payload[j] *= factor;
}

void fx_residual_apply(fx_residual *r, const fx_model *m, const fx_residual_msg *msg, const float *payload) {
    const float *p = payload;
    for (int k = 0; k < m->nadapted; k++) {
        const fx_adapted *ad = &m->ad[k];
        float *acc = r->acc + r->off[k];
        int q = msg_layer_q(m, k, msg);
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
 * started from, and W_global = W0 + R_old + R_t + dW(global) the server's new model (R_t this round's
 * residual, as its factors carry it; 0 for the methods without one):
 *
 *     err = || W_global - sum_i w_i W_i ||_F  /  || sum_i w_i W_i - W_prev ||_F
 *         = || R_t + dW(global) - sum_i w_i dW_i ||_F  /  || sum_i w_i dW_i - dW(prev) ||_F
 *
 * the deviation from the exact mean, relative to how far the round moved the model; FedEx sits at float
 * rounding, FedIT's is the paper's deviation (its Figure 2). Neither matrix is formed. Both are sums of
 * outer products, X = sum_j u_j v_j^T = U V, and ||U V||_F = ||R_U R_V^T||_F where U = Q_U R_U and
 * V^T = Q_V R_V (Householder, in double): R_U^T R_U is U's Gram matrix U^T U, obtained without forming it
 * (which would square the conditioning of the stacked factors, whose columns B_i differ little). The cost
 * is (out + in) q^2 + q^3 against out in q for the dense product; where the latter is smaller (the
 * residual travels dense then too) the product is formed row by row instead. Same value either way.
 *
 * The numerator without cancellation: the centred factors U_d, V_d in double make R_t's exact value,
 * U_d V_d = s (sum_i w_i B_i A_i - B̄ Ā) from the fp32 adapters; what travels is their fp32 rounding
 * U = U_d + ΔU, V = V_d + ΔV. So for FedEx
 *
 *     R_t + dW(global) - sum_i w_i dW_i = U V - U_d V_d = ΔU V + U_d ΔV          (rank 2q, LoRA)
 *                                       = (M - M_d) A                            (rank r, VeRA)
 *
 * and for the methods without a residual it is -U_d V_d (-M_d A). The fp32 rounding of accumulating R_t
 * into R_acc (at most an ulp of R_acc per element) is not in it; the end-to-end tests bound it from the
 * saved files. */

/* ||U V||_F through the triangular factors: U as Q columns u_j (Uc: (q, out), row j = u_j), V as Q rows
 * v_j (Vr: (q, in)); both are overwritten. */
static void householder_r(double *C, int L, int Q) {
    /* column j of the (L, Q) matrix is C[j*L .. j*L+L); afterwards its first min(j+1, L) entries are R's */
    int k = L < Q ? L : Q;
    for (int j = 0; j < k; j++) {
        double *x = C + (size_t)j * L, nrm = 0;
        for (int i = j; i < L; i++) nrm += x[i] * x[i];
        nrm = sqrt(nrm);
        if (nrm == 0) continue;
        double alpha = x[j] > 0 ? -nrm : nrm;
        x[j] -= alpha; /* v = x - alpha e_j, kept in x[j..L) */
        double vv = 0;
        for (int i = j; i < L; i++) vv += x[i] * x[i];
        for (int c = j + 1; c < Q; c++) {
            double *y = C + (size_t)c * L, dot = 0;
            for (int i = j; i < L; i++) dot += x[i] * y[i];
            double f = 2 * dot / vv;
            for (int i = j; i < L; i++) y[i] -= f * x[i];
        }
        x[j] = alpha;
    }
}

double fx_agg_norm_uv(double *Uc, double *Vr, int q, int out, int in, int how) {
    if (q == 0) return 0;
    int tri = how == FX_NORM_TRIANGULAR ||
              (how == FX_NORM_AUTO && (double)(out + in) * q * q + (double)q * q * q < (double)out * in * q);
    double sum = 0;
    if (!tri) {
        /* row o of U V is sum_j Uc[j][o] v_j; rows summed in order, so the result has one value */
        double *rows = fx_malloc(sizeof(double) * (size_t)out);
        #pragma omp parallel
        {
            double *row = fx_malloc(sizeof(double) * (size_t)(in ? in : 1));
            #pragma omp for schedule(static)
            for (int o = 0; o < out; o++) {
                for (int i = 0; i < in; i++) row[i] = 0;
                for (int j = 0; j < q; j++) {
                    double u = Uc[(size_t)j * out + o];
                    const double *v = Vr + (size_t)j * in;
                    if (u != 0) for (int i = 0; i < in; i++) row[i] += u * v[i];
                }
                double s2 = 0;
                for (int i = 0; i < in; i++) s2 += row[i] * row[i];
                rows[o] = s2;
            }
            free(row);
        }
        for (int o = 0; o < out; o++) sum += rows[o];
        free(rows);
        return sqrt(sum);
    }
    householder_r(Uc, out, q); /* R_U (k1, q): entry (a, c) at Uc[c*out + a], a <= c */
    householder_r(Vr, in, q);  /* R_V (k2, q): entry (b, c) at Vr[c*in + b], b <= c */
    int k1 = out < q ? out : q, k2 = in < q ? in : q;
    for (int a = 0; a < k1; a++)
        for (int b = 0; b < k2; b++) {
            double x = 0; /* (R_U R_V^T)[a][b] = sum_c R_U[a][c] R_V[b][c], c >= max(a, b) */
            for (int c = a > b ? a : b; c < q; c++) x += Uc[(size_t)c * out + a] * Vr[(size_t)c * in + b];
            sum += x * x;
        }
    return sqrt(sum);
}

size_t fx_agg_error_work(const fx_model *m, int n) {
    size_t w = 1;
    int q = fx_agg_residual_rank(m, n);
    for (int k = 0; k < m->nadapted; k++) {
        size_t out = (size_t)m->ad[k].out, in = (size_t)m->ad[k].in;
        /* U_d, V_d (q each), then the stacked outer products (2q) */
        size_t need = (out + in) * (size_t)q * 3;
        if (need > w) w = need;
    }
    return w;
}

/* The update's outer products: s w_i B_i[:, j] (x) A_i[j, :] for every client, then -s B_p (x) A_p (LoRA);
 * VeRA's M = sum_i w_i diag(b_i) B diag(d_i) - diag(b_p) B diag(d_p) against A's rows. Returns their count. */
static int update_terms(const fx_model *m, int k, const float *const *clients, const double *w, int n,
                        const float *prev, double *Uc, double *Vr) {
    const fx_adapted *ad = &m->ad[k];
    int r = m->a.r, in = ad->in, out = ad->out;
    if (m->a.kind == FX_LORA) {
        for (int i = 0; i <= n; i++) {
            const float *T = i < n ? clients[i] : prev;
            double f = m->scale * (i < n ? w[i] : -1.0);
            for (int j = 0; j < r; j++) {
                double *u = Uc + (size_t)(i * r + j) * out, *v = Vr + (size_t)(i * r + j) * in;
                for (int o = 0; o < out; o++) u[o] = f * T[ad->b_off + (size_t)o * r + j];
                for (int x = 0; x < in; x++) v[x] = T[ad->a_off + (size_t)j * in + x];
            }
        }
        return (n + 1) * r;
    }
    if (m->a.kind == FX_SORF) { /* S Gamma B_l (mean_i Lambda_i - Lambda_p) against A's rows */
        double *P = fx_malloc(sizeof(double) * (size_t)out * r);
        fx_sorf_residual_d(m, k, clients, w, n, prev, P);
        for (int j = 0; j < r; j++) {
            for (int o = 0; o < out; o++) Uc[(size_t)j * out + o] = P[(size_t)o * r + j];
            for (int x = 0; x < in; x++) Vr[(size_t)j * in + x] = m->vera_A[(size_t)j * m->vera_in + x];
        }
        free(P);
        return r;
    }
    for (int j = 0; j < r; j++) {
        double *u = Uc + (size_t)j * out, *v = Vr + (size_t)j * in;
        for (int o = 0; o < out; o++) {
            double acc = 0;
            for (int i = 0; i < n; i++) acc += w[i] * (double)clients[i][ad->b_off + o] * clients[i][ad->a_off + j];
            acc -= (double)prev[ad->b_off + o] * prev[ad->a_off + j];
            u[o] = m->vera_B[(size_t)o * r + j] * acc;
        }
        for (int x = 0; x < in; x++) v[x] = m->vera_A[(size_t)j * m->vera_in + x];
    }
    return r;
}

double fx_agg_error(const fx_model *m, int k, float residual, const float *const *clients, const double *w, int n,
                    const float *global, const float *prev_global, double *work) {
    const fx_adapted *ad = &m->ad[k];
    int exact = residual != 0; /* a residual is sent: fl(U_d), times RESIDUAL for VeRA (fx_residual_scale) */
    int out = ad->out, in = ad->in, q = fx_agg_residual_rank(m, n), lora = m->a.kind == FX_LORA;
    double *Ud = work, *Vd = Ud + (size_t)out * q, *Uc = Vd + (size_t)q * in, *Vr = Uc + (size_t)2 * q * out;
    factors_d(m, k, clients, w, n, global, Ud, Vd);
    int t = 0; /* outer products of the numerator */
    for (int j = 0; j < q; j++, t++) {
        double *u = Uc + (size_t)t * out, *v = Vr + (size_t)t * in;
        for (int o = 0; o < out; o++) {
            double x = Ud[(size_t)o * q + j];
            float sent = lora ? (float)x : (float)x * residual;   /* what the message carries */
            u[o] = exact ? (double)sent - x : -x;                 /* ΔU, or -U_d */
        }
        for (int x = 0; x < in; x++) {
            double y = lora ? Vd[(size_t)j * in + x] : m->vera_A[(size_t)j * m->vera_in + x];
            v[x] = exact && lora ? (double)(float)y : y;          /* V as sent, or V_d */
        }
    }
    if (exact && lora)
        for (int j = 0; j < q; j++, t++) {
            double *u = Uc + (size_t)t * out, *v = Vr + (size_t)t * in;
            for (int o = 0; o < out; o++) u[o] = Ud[(size_t)o * q + j];
            for (int x = 0; x < in; x++) { double y = Vd[(size_t)j * in + x]; v[x] = (double)(float)y - y; } /* ΔV */
        }
    double num = fx_agg_norm_uv(Uc, Vr, t, out, in, FX_NORM_AUTO);
    t = update_terms(m, k, clients, w, n, prev_global, Uc, Vr);
    double den = fx_agg_norm_uv(Uc, Vr, t, out, in, FX_NORM_AUTO);
    if (den == 0) return num == 0 ? 0.0 : INFINITY;
    return num / den;
}

/* ============================================================================================
 * The frozen state's fingerprint
 * ============================================================================================
 * Exact aggregation rests on every party computing with the same W0 (and VeRA's shared projections):
 * a client whose checkpoint differs by one weight trains another model. Every party hashes what it holds
 * (FNV-1a over 64-bit words): the base weights with the adapted layers' original W0 (not W0 + R_acc),
 * then A and B of VeRA. */

static uint64_t fnv_words(uint64_t h, const float *x, size_t n) {
    size_t i = 0;
    for (; i + 2 <= n; i += 2) {
        uint64_t w;
        memcpy(&w, x + i, sizeof w);
        h = (h ^ w) * 0x100000001b3ULL;
    }
    for (; i < n; i++) {
        uint32_t w;
        memcpy(&w, x + i, sizeof w);
        h = (h ^ w) * 0x100000001b3ULL;
    }
    return h;
}

/* bf16 words, two to a 32-bit word (an odd one alone) */
static uint64_t fnv_halves(uint64_t h, const uint16_t *x, size_t n) {
    for (size_t i = 0; i < n; i += 2) {
        uint32_t w = x[i] | (i + 1 < n ? (uint32_t)x[i + 1] << 16 : 0);
        h = (h ^ w) * 0x100000001b3ULL;
    }
    return h;
}

uint64_t fx_frozen_hash(const fx_model *m, const fx_residual *r) {
    uint64_t h = 0xcbf29ce484222325ULL;
    size_t at = 0;
    /* bf16: the fp32 vectors first, then the matrices (where the adapted layers lie) */
    if (m->base.bf) h = fnv_words(h, m->base.data, m->base.n);
    size_t nall = m->base.bf ? m->base.nbf : m->base.n;
    /* the adapted layers' ranges in the order they lie in the base */
    for (int done = 0; done < m->nadapted; done++) {
        int k = -1;
        for (int j = 0; j < m->nadapted; j++)
            if (m->ad[j].w_off >= at && (k < 0 || m->ad[j].w_off < m->ad[k].w_off)) k = j;
        if (k < 0) break;
        size_t w = m->ad[k].w_off, len = r->off[k + 1] - r->off[k];
        h = m->base.bf ? fnv_halves(h, m->base.bf + at, w - at) : fnv_words(h, m->base.data + at, w - at);
        h = fnv_words(h, r->w0 + r->off[k], len);
        at = w + len;
    }
    h = m->base.bf ? fnv_halves(h, m->base.bf + at, nall - at) : fnv_words(h, m->base.data + at, nall - at);
    if (m->vera_A) h = fnv_words(h, m->vera_A, (size_t)m->a.r * m->vera_in);
    if (m->vera_B) h = fnv_words(h, m->vera_B, (size_t)m->vera_out * m->a.r);
    return h;
}
