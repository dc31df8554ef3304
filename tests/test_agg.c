/* tests/test_agg.c: the aggregation math of agg.c against a plain double-precision computation written
 * here: the FedIT mean, FedEx's residual (LoRA from its factors, VeRA), and the aggregation error, for
 * plain and sample-weighted means, on a small random model. */
#include "fedex.h"
#include "check.h"

#include <string.h>

/* Tolerances, each with its reason. */
enum { NCL = 4 };
static const double TOL_MEAN = 1e-7;      /* fp32 result of a double mean: half an ulp, relative */
static const double TOL_RESIDUAL = 1e-5;  /* R from fp32 factors and one fp32 GEMM, relative to ||R||:
                                             centred factors keep the terms the size of R */
static const double TOL_EXACT = 1e-5;     /* the bound on FedEx's aggregation error in fp32 */
/* FedEx's error from its factors against the dense reference: the reference forms U V - R in double from
 * terms |U||V| up to ~1e3 times the difference (cancellation: ~1e-13 of it lost), the factored path has
 * no cancellation; the error itself is ~1e-8, so 1e-4 of it and an absolute 1e-12 cover the reference. */
static const double TOL_ERR_DENSE = 1e-4, TOL_ERR_ABS = 1e-12;
/* ||U V||_F by triangular factors against the product formed: both in double, sums of q terms of which
 * the result keeps ~1e-8 (the test's cancellation): 1e-16 / 1e-8 relative, with a margin. */
static const double TOL_NORM = 1e-6;

static void fill(float *x, size_t n, fx_rng *r, double scale) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(scale * (2 * fx_rng_uniform(r) - 1));
}

/* dW of adapted layer k for trainable buffer T, in double, straight from the definitions. */
static void ref_delta(const fx_model *m, int k, const float *T, double *dW) {
    const fx_adapted *ad = &m->ad[k];
    int r = m->a.r;
    for (int o = 0; o < ad->out; o++)
        for (int i = 0; i < ad->in; i++) {
            double s = 0;
            for (int j = 0; j < r; j++) {
                if (m->a.kind == FX_LORA)
                    s += (double)T[ad->b_off + (size_t)o * r + j] * T[ad->a_off + (size_t)j * ad->in + i];
                else
                    s += (double)T[ad->b_off + o] * m->vera_B[(size_t)o * r + j] * T[ad->a_off + j] *
                         m->vera_A[(size_t)j * m->vera_in + i];
            }
            dW[(size_t)o * ad->in + i] = (m->a.kind == FX_LORA ? m->scale : 1.0) * s;
        }
}

static double rel_err(const double *got, const double *want, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) { num += (got[i] - want[i]) * (got[i] - want[i]); den += want[i] * want[i]; }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* A small random model of 2 layers with LoRA r 4 or VeRA r 8 on TARGETS: 0, or -1 (a failed check). */
static int small_model(fx_model *m, fx_adapter_kind kind, int hidden, int inter, unsigned targets, const char *name) {
    fx_config c = {.vocab_size = 30, .hidden = hidden, .layers = 2, .heads = 2, .intermediate = inter,
                   .max_positions = 20, .type_vocab_size = 1, .pad_id = 1, .num_labels = 2, .layer_norm_eps = 1e-5f,
                   .initializer_range = 0.02f};
    fx_adapter_cfg a = {.kind = kind, .targets = targets, .r = kind == FX_LORA ? 4 : 8, .alpha = 8, .d_initial = 0.1f,
                        .seed = 7};
    if (fx_model_create(m, &c, &a, NULL) != 0) { CHECK(0, "%s: fx_model_create: %s", name, fx_err()); return -1; }
    fx_model_init_base(m, 1);
    fx_model_init_adapters(m, 2);
    return 0;
}

/* HIDDEN 24: every layer's error is formed densely (the cheaper there); 256: query and value's go through
 * triangular factors, intermediate.dense's (40 x 256) densely. */
static void run_case(fx_adapter_kind kind, int weighted, int hidden) {
    char name[64];
    snprintf(name, sizeof name, "%s%s, hidden %d", kind == FX_LORA ? "LoRA" : "VeRA", weighted ? " weighted" : "", hidden);
    fx_model m;
    if (small_model(&m, kind, hidden, 40, FX_T_QUERY | FX_T_VALUE | FX_T_INTER, name) != 0) return;
    const fx_adapter_cfg a = m.a;
    size_t P = m.train.n;
    fx_rng rng;
    fx_rng_seed(&rng, 99 + (uint64_t)kind * 10 + (uint64_t)weighted);
    /* clients: the shared starting point plus a client-specific move, as after local training */
    float *start = fx_malloc(sizeof(float) * P), *cl[NCL], *glob = fx_malloc(sizeof(float) * P);
    fill(start, P, &rng, 0.05);
    double w[NCL], wsum = 0;
    for (int i = 0; i < NCL; i++) {
        cl[i] = fx_malloc(sizeof(float) * P);
        for (size_t j = 0; j < P; j++) cl[i][j] = start[j] + (float)(0.01 * (2 * fx_rng_uniform(&rng) - 1));
        w[i] = weighted ? 1.0 + 10 * fx_rng_uniform(&rng) : 1.0;
        wsum += w[i];
    }
    for (int i = 0; i < NCL; i++) w[i] /= wsum;

    /* FedIT mean */
    fx_agg_mean(glob, (const float *const *)cl, w, NCL, P);
    double worst = 0;
    for (size_t j = 0; j < P; j++) {
        double ref = 0;
        for (int i = 0; i < NCL; i++) ref += w[i] * cl[i][j];
        double e = fabs(glob[j] - ref) / (fabs(ref) + 1e-30);
        if (e > worst) worst = e;
    }
    CHECK(worst <= TOL_MEAN, "%s: mean off by %.3g relative", name, worst);

    for (int k = 0; k < m.nadapted; k++) {
        const fx_adapted *ad = &m.ad[k];
        size_t len = (size_t)ad->out * ad->in;
        int qmax = (NCL + 2) * a.r;
        float *U = fx_malloc(sizeof(float) * (size_t)ad->out * qmax), *V = fx_malloc(sizeof(float) * (size_t)qmax * ad->in);
        float *Rf = fx_malloc(sizeof(float) * len), *zero = fx_calloc(len, sizeof(float));
        double *ref = fx_calloc(len, sizeof(double)), *tmp = fx_malloc(sizeof(double) * len), *got = fx_malloc(sizeof(double) * len);
        /* reference: R = sum_i w_i dW_i - dW(global), in double */
        for (int i = 0; i < NCL; i++) {
            ref_delta(&m, k, cl[i], tmp);
            for (size_t j = 0; j < len; j++) ref[j] += w[i] * tmp[j];
        }
        ref_delta(&m, k, glob, tmp);
        for (size_t j = 0; j < len; j++) ref[j] -= tmp[j];
        int q = fx_agg_residual_factors(&m, k, (const float *const *)cl, w, NCL, glob, U, V);
        CHECK(q == (kind == FX_LORA ? (NCL + 2) * a.r : a.r), "%s %s: q = %d", name, ad->name, q);
        fx_matmul(0, 0, ad->out, ad->in, q, 1.0f, U, q, V, ad->in, 0.0f, Rf, ad->in);
        for (size_t j = 0; j < len; j++) got[j] = Rf[j];
        double e = rel_err(got, ref, len);
        CHECK(e <= TOL_RESIDUAL, "%s %s: residual off by %.3g of its norm", name, ad->name, e);
        /* the residual must be in W's (out, in) orientation: its transpose is another matrix */
        if (ad->out == ad->in) {
            for (int o = 0; o < ad->out; o++)
                for (int i = 0; i < ad->in; i++) got[(size_t)o * ad->in + i] = Rf[(size_t)i * ad->in + o];
            CHECK(rel_err(got, ref, len) > 0.1, "%s %s: the transposed residual matches too", name, ad->name);
        }
        /* aggregation error: FedEx (R added) at rounding, FedIT (nothing added) clearly not */
        double *work = fx_malloc(sizeof(double) * fx_agg_error_work(&m, NCL));
        double ex = fx_agg_error(&m, k, 1, (const float *const *)cl, w, NCL, glob, start, work);
        double it = fx_agg_error(&m, k, 0, (const float *const *)cl, w, NCL, glob, start, work);
        CHECK(ex < TOL_EXACT, "%s %s: FedEx aggregation error %.3g", name, ad->name, ex);
        CHECK(it > 100 * TOL_EXACT, "%s %s: FedIT aggregation error %.3g is not clearly above FedEx's", name, ad->name, it);
        /* FedIT's error, recomputed: ||R|| / || sum_i w_i dW_i - dW(start) || */
        ref_delta(&m, k, start, tmp);
        double num = 0, den = 0;
        double *mean = fx_calloc(len, sizeof(double)), *dw = fx_malloc(sizeof(double) * len);
        for (int i = 0; i < NCL; i++) {
            ref_delta(&m, k, cl[i], dw);
            for (size_t j = 0; j < len; j++) mean[j] += w[i] * dw[j];
        }
        for (size_t j = 0; j < len; j++) { num += ref[j] * ref[j]; den += (mean[j] - tmp[j]) * (mean[j] - tmp[j]); }
        double it_ref = sqrt(num / den);
        CHECK(fabs(it - it_ref) <= 1e-6 * it_ref, "%s %s: FedIT error %.9g, reference %.9g", name, ad->name, it, it_ref);
        /* FedEx's error, recomputed densely: the residual as its fp32 factors carry it, U V in double,
         * plus dW(global) minus the clients' mean, against the same update */
        double ex_num = 0;
        for (int o = 0; o < ad->out; o++)
            for (int i = 0; i < ad->in; i++) {
                double r = 0;
                for (int j = 0; j < q; j++)
                    r += (double)U[(size_t)o * q + j] *
                         (kind == FX_LORA ? V[(size_t)j * ad->in + i] : m.vera_A[(size_t)j * m.vera_in + i]);
                size_t e = (size_t)o * ad->in + i;
                double d = r - ref[e]; /* ref = sum_i w_i dW_i - dW(global) */
                ex_num += d * d;
            }
        double ex_ref = sqrt(ex_num / den);
        CHECK(fabs(ex - ex_ref) <= TOL_ERR_DENSE * ex_ref + TOL_ERR_ABS, "%s %s: FedEx error %.9g, dense reference %.9g",
              name, ad->name, ex, ex_ref);
        free(mean); free(dw); free(work);
        free(U); free(V); free(Rf); free(zero); free(ref); free(tmp); free(got);
    }
    for (int i = 0; i < NCL; i++) free(cl[i]);
    free(start); free(glob);
    fx_model_free(&m);
}

/* The residual's one owner: a server and a client that only receives the messages (as a GPU client, or a
 * client on another machine, does) accumulate R_acc with the same call and form the same frozen weights,
 * bit for bit, round after round, with different thread counts; folding each round's residual into a
 * copy of W0 instead (what GPU clients once did) drifts from them. */
static void frozen_case(fx_adapter_kind kind, int dense) {
    const char *name = kind == FX_LORA ? (dense ? "LoRA dense" : "LoRA factored") : (dense ? "VeRA dense" : "VeRA factored");
    /* output.dense (384 x 1536) at q = 24 is past fx_matmul's threshold for running on several threads */
    unsigned targets = FX_T_QUERY | FX_T_VALUE | FX_T_OUTPUT;
    fx_model srv, cli;
    if (small_model(&srv, kind, 384, 1536, targets, name) != 0) return;
    if (small_model(&cli, kind, 384, 1536, targets, name) != 0) { fx_model_free(&srv); return; }
    fx_residual rs, rc;
    fx_residual_init(&rs, &srv);
    fx_residual_init(&rc, &cli);
    size_t P = srv.train.n, wtot = rs.off[rs.n];
    float *naive = fx_malloc(sizeof(float) * wtot); /* W0 with each round's R_t folded in */
    memcpy(naive, rs.w0, sizeof(float) * wtot);
    float *pay = fx_malloc(sizeof(float) * fx_residual_msg_capacity(&srv, NCL)), *scratch = fx_malloc(sizeof(float) * wtot * 8);
    float *copy = fx_malloc(sizeof(float) * fx_residual_msg_capacity(&srv, NCL)), *Rt = fx_malloc(sizeof(float) * wtot);
    float *cl[NCL], *glob = fx_malloc(sizeof(float) * P), *Ws = fx_malloc(sizeof(float) * wtot), *Wc = fx_malloc(sizeof(float) * wtot);
    for (int i = 0; i < NCL; i++) cl[i] = fx_malloc(sizeof(float) * P);
    double w[NCL] = {0.1, 0.2, 0.3, 0.4};
    fx_rng rng;
    fx_rng_seed(&rng, 5 + (uint64_t)kind + 2 * (uint64_t)dense);
    memcpy(glob, srv.train.data, sizeof(float) * P);
    int same = 1;
    size_t drift = 0;
    enum { ROUNDS = 6 };
    for (int round = 1; round <= ROUNDS; round++) {
        for (int i = 0; i < NCL; i++)
            for (size_t j = 0; j < P; j++) cl[i][j] = glob[j] + (float)(0.05 * (2 * fx_rng_uniform(&rng) - 1));
        fx_agg_mean(glob, (const float *const *)cl, w, NCL, P);
        fx_residual_msg msg, got;
        fx_set_threads(2);
        fx_residual_make(&srv, dense, (const float *const *)cl, w, NCL, glob, round, &msg, pay, scratch);
        size_t bytes = fx_residual_msg_bytes(&srv, &msg);
        memcpy(&got, &msg, sizeof msg); /* what travels: the header and its payload, nothing else */
        memcpy(copy, pay, bytes - sizeof msg);
        memcpy(Rt, rs.acc, sizeof(float) * wtot);
        fx_residual_apply(&rs, &srv, &msg, pay);
        for (size_t j = 0; j < wtot; j++) Rt[j] = rs.acc[j] - Rt[j]; /* this round's R_t, as the server added it */
        fx_set_threads(1);
        fx_residual_apply(&rc, &cli, &got, copy);
        for (int k = 0; k < rs.n; k++) {
            fx_residual_frozen(&rs, k, Ws + rs.off[k]);
            fx_residual_frozen(&rc, k, Wc + rc.off[k]);
        }
        same &= !memcmp(Ws, Wc, sizeof(float) * wtot) && rc.round == round;
        for (size_t j = 0; j < wtot; j++) naive[j] += Rt[j];
    }
    for (size_t j = 0; j < wtot; j++) drift += naive[j] != Ws[j];
    fx_set_threads(2);
    CHECK(same, "%s: the client's frozen weights equal the server's bit for bit after each of %d rounds", name, ROUNDS);
    CHECK(drift > 0, "%s: folding each round into W0 drifts from fl(W0 + R_acc) (%zu of %zu weights differ)", name,
          drift, wtot);
    size_t want = 0;
    int q = dense ? 0 : fx_agg_residual_rank(&srv, NCL);
    for (int k = 0; k < srv.nadapted; k++) {
        size_t out = (size_t)srv.ad[k].out, in = (size_t)srv.ad[k].in;
        want += q == 0 ? out * in : kind == FX_LORA ? (out + in) * (size_t)q : out * (size_t)q;
    }
    fx_residual_msg last = {.round = ROUNDS, .q = q};
    CHECK(fx_residual_msg_bytes(&srv, &last) == sizeof last + 4 * want, "%s: message bytes %zu, want %zu", name,
          fx_residual_msg_bytes(&srv, &last), sizeof last + 4 * want);
    for (int i = 0; i < NCL; i++) free(cl[i]);
    free(naive); free(pay); free(scratch); free(copy); free(Rt); free(glob); free(Ws); free(Wc);
    fx_residual_free(&rs); fx_residual_free(&rc);
    fx_model_free(&srv); fx_model_free(&cli);
}

/* ||sum_j u_j v_j^T||_F through triangular factors equals the product formed densely, on a case that
 * cancels as the aggregation error does: the outer products of clients' nearly equal factors minus the
 * mean's, whose sum is ~1e-8 of its terms; also wide (q > out) and rank-deficient (repeated rows). */
static void norm_case(int out, int in, int q, int repeat, const char *name) {
    fx_rng g;
    fx_rng_seed(&g, (uint64_t)(out * 131 + in * 7 + q));
    size_t nu = (size_t)q * out, nv = (size_t)q * in;
    double *U = fx_malloc(sizeof(double) * nu), *V = fx_malloc(sizeof(double) * nv);
    double *U2 = fx_malloc(sizeof(double) * nu), *V2 = fx_malloc(sizeof(double) * nv);
    int h = q / 2;
    for (int j = 0; j < q; j++)
        for (int o = 0; o < out; o++) U[(size_t)j * out + o] = j < h ? 2 * fx_rng_uniform(&g) - 1 : 0;
    for (int j = 0; j < h; j++)
        for (int x = 0; x < in; x++) V[(size_t)j * in + x] = repeat && j > 0 ? V[x] : 2 * fx_rng_uniform(&g) - 1;
    /* second half: -u_j (x) (v_j + 1e-8 noise): the sum is 1e-8 of the terms */
    for (int j = h; j < 2 * h; j++) {
        for (int o = 0; o < out; o++) U[(size_t)j * out + o] = -U[(size_t)(j - h) * out + o];
        for (int x = 0; x < in; x++) V[(size_t)j * in + x] = V[(size_t)(j - h) * in + x] + 1e-8 * (2 * fx_rng_uniform(&g) - 1);
    }
    for (int j = 2 * h; j < q; j++) for (int x = 0; x < in; x++) V[(size_t)j * in + x] = 0;
    /* the reference, written here: (U V)[o][x] summed over j, squared, summed */
    double ref = 0;
    for (int o = 0; o < out; o++)
        for (int x = 0; x < in; x++) {
            double s = 0;
            for (int j = 0; j < q; j++) s += U[(size_t)j * out + o] * V[(size_t)j * in + x];
            ref += s * s;
        }
    ref = sqrt(ref);
    memcpy(U2, U, sizeof(double) * nu); memcpy(V2, V, sizeof(double) * nv);
    double tri = fx_agg_norm_uv(U2, V2, q, out, in, FX_NORM_TRIANGULAR);
    memcpy(U2, U, sizeof(double) * nu); memcpy(V2, V, sizeof(double) * nv);
    double dense = fx_agg_norm_uv(U2, V2, q, out, in, FX_NORM_DENSE);
    CHECK(ref > 0 && fabs(tri - ref) <= TOL_NORM * ref, "%s: ||U V|| by triangular factors %.12g, formed %.12g", name, tri, ref);
    CHECK(fabs(dense - ref) <= TOL_NORM * ref, "%s: ||U V|| row by row %.12g, formed %.12g", name, dense, ref);
    free(U); free(V); free(U2); free(V2);
}

int main(void) {
    norm_case(60, 50, 12, 0, "tall");
    norm_case(9, 70, 24, 0, "wide (q > out)");
    norm_case(40, 8, 20, 0, "wide (q > in)");
    norm_case(50, 40, 16, 1, "repeated rows (rank-deficient V)");
    fx_agg_method mth;
    CHECK(fx_agg_parse("ours", &mth) == 0 && mth == FX_AGG_FEDEX, "ours is fedex");
    CHECK(fx_agg_parse("normal", &mth) == 0 && mth == FX_AGG_FEDIT, "normal is fedit");
    CHECK(fx_agg_parse("ours_vera", &mth) == 0 && mth == FX_AGG_FEDEX_VERA, "ours_vera is fedex-vera");
    CHECK(fx_agg_parse("bogus", &mth) != 0 && strstr(fx_err(), "bogus"), "unknown method refused");
    CHECK(fx_agg_is_exact(FX_AGG_FEDEX) && fx_agg_is_exact(FX_AGG_FEDEX_VERA) && !fx_agg_is_exact(FX_AGG_FEDIT),
          "exact methods");
    for (int wgt = 0; wgt < 2; wgt++) {
        run_case(FX_LORA, wgt, 24);
        run_case(FX_VERA, wgt, 24);
    }
    run_case(FX_LORA, 0, 256);
    run_case(FX_VERA, 1, 256);
    for (int dense = 0; dense < 2; dense++) {
        frozen_case(FX_LORA, dense);
        frozen_case(FX_VERA, dense);
    }
    return check_done();
}
