/* sorf.c: SORF-VeRA's math. The orthonormal mixer S (greedy power-of-two blocks D1 H D2 H D3, three
 * permuted block-diagonal stages) applied by fast Walsh-Hadamard transforms, Gamma(b)'s 2x2 blocks,
 * Lambda_d = s G(theta) as Givens rotations, the CPU ops for all of them, the layer's dW, and the server's
 * side: the VeRA fork's refit of b, s, theta from an SVD of the averaged dW, and the exact residual
 * that fedex-sorf-vera adds. No file I/O, no model step (adapter.c calls the ops in order). */
#include "fedex.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ============================================================================================
 * The mixer S
 * ============================================================================================
 * d splits greedily into descending powers of two (768 = 512 + 256). A stage is the block-diagonal
 * B = diag(D1 H D2 H D3, ...) (H the normalised Sylvester Hadamard of the block's size, Di random +-1
 * diagonals) conjugated by a random permutation P: B_P = P B P^T, (B_P v)[i] = (B y)[perm[i]] with
 * y[perm[j]] = v[j]. Three stages: S = B_P2 B_P1 B_P0, orthonormal as a product of orthonormal factors.
 * The signs and permutations come from fedex's own stream seeded by --sorf-seed (the VeRA fork draws
 * them from PyTorch's, which fedex does not reproduce here), so S is never stored dense. */

#define STAGES 3

void fx_sorf_mixer_build(fx_sorf_mixer *S, int d, uint64_t seed) {
    S->d = d;
    S->signs = fx_malloc(sizeof(float) * (size_t)STAGES * 3 * d);
    S->perm = fx_malloc(sizeof(int32_t) * (size_t)STAGES * d);
    fx_rng g;
    fx_rng_seed(&g, seed ^ (0x50f2e5a9d1b4c3a7ULL * (uint64_t)d));
    for (int t = 0; t < STAGES; t++) {
        for (int j = 0; j < 3 * d; j++) S->signs[(size_t)t * 3 * d + j] = (fx_rng_u64(&g) >> 63) ? -1.0f : 1.0f;
        int32_t *p = S->perm + (size_t)t * d;
        for (int j = 0; j < d; j++) p[j] = j;
        for (int j = d - 1; j > 0; j--) { /* Fisher-Yates */
            int k = (int)(fx_rng_u64(&g) % (uint64_t)(j + 1));
            int32_t x = p[j]; p[j] = p[k]; p[k] = x;
        }
    }
}

void fx_sorf_mixer_free(fx_sorf_mixer *S) {
    free(S->signs); free(S->perm);
    memset(S, 0, sizeof *S);
}

const fx_sorf_mixer *fx_sorf_of(const fx_model *m, int d) {
    for (int i = 0; i < m->nsorf; i++)
        if (m->sorf[i].d == d) return &m->sorf[i];
    return NULL;
}

/* Stage T's diagonal K (0: D1, 1: D2, 2: D3), (d). */
static const float *diag_of(const fx_sorf_mixer *S, int t, int k) { return S->signs + ((size_t)t * 3 + k) * S->d; }

/* y (N, d) = x S^T (each row S x; S^T x with TRANSPOSE), TMP (N, d) scratch; y may be x, neither is TMP.
 * S^T = B_P0^T B_P1^T B_P2^T and B^T's blocks are D3 H D2 H D1. */
void fx_sorf_mix(const fx_ops *op, const fx_sorf_mixer *S, float *y, float *tmp, const float *x, int N, int transpose) {
    int d = S->d;
    size_t n = (size_t)N * d;
    for (int s = 0; s < STAGES; s++) {
        int t = transpose ? STAGES - 1 - s : s;
        const int32_t *perm = S->perm + (size_t)t * d;
        op->permute_cols(tmp, s == 0 ? x : y, perm, N, d, 1);
        op->scale_cols(tmp, diag_of(S, t, transpose ? 0 : 2), tmp, n, d);
        op->fwht(tmp, N, d);
        op->scale_cols(tmp, diag_of(S, t, 1), tmp, n, d);
        op->fwht(tmp, N, d);
        op->scale_cols(tmp, diag_of(S, t, transpose ? 2 : 0), tmp, n, d);
        op->permute_cols(y, tmp, perm, N, d, 0);
    }
}

/* The same on one vector in double (the server's math and the tests' dense S), in place; TMP (d). */
static void fwht_d(double *x, int n) {
    for (int h = 1; h < n; h *= 2)
        for (int i = 0; i < n; i += 2 * h)
            for (int j = i; j < i + h; j++) { double a = x[j], b = x[j + h]; x[j] = a + b; x[j + h] = a - b; }
    double f = 1.0 / sqrt((double)n);
    for (int i = 0; i < n; i++) x[i] *= f;
}
static void blocks_d(double *x, int d) {
    for (int o = 0; o < d;) {
        int n = 1;
        while (2 * n <= d - o) n *= 2;
        fwht_d(x + o, n);
        o += n;
    }
}
void fx_sorf_mix_d(const fx_sorf_mixer *S, double *v, double *tmp, int transpose) {
    int d = S->d;
    for (int s = 0; s < STAGES; s++) {
        int t = transpose ? STAGES - 1 - s : s;
        const int32_t *perm = S->perm + (size_t)t * d;
        const float *first = diag_of(S, t, transpose ? 0 : 2), *mid = diag_of(S, t, 1), *last = diag_of(S, t, transpose ? 2 : 0);
        for (int j = 0; j < d; j++) tmp[perm[j]] = v[j] * first[perm[j]];
        blocks_d(tmp, d);
        for (int j = 0; j < d; j++) tmp[j] *= mid[j];
        blocks_d(tmp, d);
        for (int j = 0; j < d; j++) tmp[j] *= last[j];
        for (int i = 0; i < d; i++) v[i] = tmp[perm[i]];
    }
}

/* ============================================================================================
 * The CPU ops: FWHT, permutations, Gamma, Lambda_d
 * ============================================================================================ */

/* x (rows, d) in place: each block of the greedy split of each row times H_n / sqrt(n), in fp32. */
void fx_cpu_fwht(float *x, int rows, int d) {
    #pragma omp parallel for schedule(static) if ((long)rows * d >= 16384)
    for (int r = 0; r < rows; r++) {
        float *row = x + (size_t)r * d;
        for (int o = 0; o < d;) {
            int n = 1;
            while (2 * n <= d - o) n *= 2;
            float *b = row + o;
            for (int h = 1; h < n; h *= 2)
                for (int i = 0; i < n; i += 2 * h)
                    for (int j = i; j < i + h; j++) { float u = b[j], v = b[j + h]; b[j] = u + v; b[j + h] = u - v; }
            float f = (float)(1.0 / sqrt((double)n));
            for (int i = 0; i < n; i++) b[i] *= f;
            o += n;
        }
    }
}

void fx_cpu_permute_cols(float *out, const float *in, const int32_t *perm, int rows, int d, int scatter) {
    #pragma omp parallel for schedule(static) if ((long)rows * d >= 16384)
    for (int r = 0; r < rows; r++) {
        float *o = out + (size_t)r * d;
        const float *x = in + (size_t)r * d;
        if (scatter) for (int j = 0; j < d; j++) o[perm[j]] = x[j];
        else for (int i = 0; i < d; i++) o[i] = x[perm[i]];
    }
}

/* Gamma(b) = diag([[a_j, -c_j], [c_j, a_j]]), a = b[0 .. d/2), c = b[d/2 .. d): out row = Gamma in row,
 * or Gamma^T in row with TRANSPOSE. */
void fx_cpu_gamma_apply(float *out, const float *in, const float *b, int rows, int d, int transpose) {
    int h = d / 2;
    float sg = transpose ? -1.0f : 1.0f;
    #pragma omp parallel for schedule(static) if ((long)rows * d >= 16384)
    for (int r = 0; r < rows; r++) {
        const float *x = in + (size_t)r * d;
        float *o = out + (size_t)r * d;
        for (int j = 0; j < h; j++) {
            float a = b[j], c = sg * b[h + j], u = x[2 * j], v = x[2 * j + 1];
            o[2 * j] = a * u - c * v;
            o[2 * j + 1] = c * u + a * v;
        }
    }
}

/* G(theta) = G_0 G_1 ... G_{K-1}, K = r(r-1)/2, G_k the rotation of pair k in the order (0,1), (0,2),
 * ..., (0,r-1), (1,2), ..., (r-2,r-1) by theta_k acting on rows p, q: [p; q] <- [[c, -s], [s, c]] [p; q].
 * Built from the identity by applying G_{K-1} first, as the VeRA fork's build_lambda_d_rot does. In
 * double; G (r, r) row-major. */
void fx_sorf_givens_d(double *G, const float *theta, int r) {
    for (int i = 0; i < r * r; i++) G[i] = 0;
    for (int i = 0; i < r; i++) G[(size_t)i * r + i] = 1;
    int k = r * (r - 1) / 2;
    for (int p = r - 2; p >= 0; p--)
        for (int q = r - 1; q > p; q--) {
            double t = theta[--k], c = cos(t), s = sin(t);
            double *gp = G + (size_t)p * r, *gq = G + (size_t)q * r;
            for (int j = 0; j < r; j++) { double a = gp[j], b = gq[j]; gp[j] = c * a - s * b; gq[j] = s * a + c * b; }
        }
}

/* M (r, r) = sd[0] G(sd[1 ..]) in fp32 (Lambda_d of one layer). */
void fx_cpu_givens_build(float *M, const float *sd, int r) {
    double *G = fx_malloc(sizeof(double) * (size_t)r * r);
    fx_sorf_givens_d(G, sd + 1, r);
    for (size_t i = 0; i < (size_t)r * r; i++) M[i] = (float)((double)sd[0] * G[i]);
    free(G);
}

/* The gradient of sd = (s, theta) from dM = dL/dLambda_d: ds = <dM, G>, and with gG = s dM the rotations
 * are undone in the order they were applied last first (G_0 first): before G_k, rows p, q of G were
 * G_k^T's, dtheta_k = <gG_p, -s G_p - c G_q> + <gG_q, c G_p - s G_q> on the rows before it, and gG
 * goes back through G_k^T. In double, from the fp32 dM. */
void fx_cpu_givens_backward(float *gsd, const float *dM, const float *sd, int r) {
    size_t rr = (size_t)r * r;
    double *G = fx_malloc(sizeof(double) * rr * 2), *gG = G + rr, ds = 0;
    fx_sorf_givens_d(G, sd + 1, r);
    for (size_t i = 0; i < rr; i++) { ds += (double)dM[i] * G[i]; gG[i] = (double)sd[0] * dM[i]; }
    gsd[0] = (float)ds;
    int k = 0;
    for (int p = 0; p < r - 1; p++)
        for (int q = p + 1; q < r; q++, k++) {
            double t = sd[1 + k], c = cos(t), s = sin(t), dt = 0;
            double *gp = G + (size_t)p * r, *gq = G + (size_t)q * r, *hp = gG + (size_t)p * r, *hq = gG + (size_t)q * r;
            for (int j = 0; j < r; j++) {
                double a = c * gp[j] + s * gq[j], b = -s * gp[j] + c * gq[j]; /* rows before G_k */
                dt += hp[j] * (-s * a - c * b) + hq[j] * (c * a - s * b);
                gp[j] = a; gq[j] = b;
                double u = hp[j], v = hq[j];
                hp[j] = c * u + s * v; hq[j] = -s * u + c * v;
            }
            gsd[1 + k] = (float)dt;
        }
    free(G);
}

/* ============================================================================================
 * A layer's dW, and the server's refit and residual
 * ============================================================================================
 * Layer K's trainable state: sd = (s, theta) at a_off (1 + r(r-1)/2), b = (a, c) at b_off (out). With
 * P(b, L) = S Gamma(b) B_l L (out, r) the update is dW = P(b, s G(theta)) A_l. Clients share b within a
 * round, so dW is linear in Lambda_d and the mean of the clients' models has P(b, mean_i Lambda_i). */

/* P (out, r) row-major = S Gamma(b) B_l L for L (r, r) in double. */
static void sorf_p(const fx_model *m, int k, const float *b, const double *L, double *P) {
    const fx_adapted *ad = &m->ad[k];
    int r = m->a.r, out = ad->out, h = out / 2;
    const fx_sorf_mixer *S = fx_sorf_of(m, out);
    double *v = fx_malloc(sizeof(double) * (size_t)out * 3), *g = v + out, *tmp = g + out;
    for (int j = 0; j < r; j++) {
        for (int o = 0; o < out; o++) {
            double acc = 0;
            for (int i = 0; i < r; i++) acc += (double)m->vera_B[(size_t)o * r + i] * L[(size_t)i * r + j];
            v[o] = acc;
        }
        for (int i = 0; i < h; i++) {
            double a = b[i], c = b[h + i];
            g[2 * i] = a * v[2 * i] - c * v[2 * i + 1];
            g[2 * i + 1] = c * v[2 * i] + a * v[2 * i + 1];
        }
        fx_sorf_mix_d(S, g, tmp, 0);
        for (int o = 0; o < out; o++) P[(size_t)o * r + j] = g[o];
    }
    free(v);
}

/* Lambda (r, r) = s G(theta) of layer K's state in T, in double; ADD: L += w Lambda. */
static void lambda_of(const fx_model *m, int k, const float *T, double *L, double w, int add, double *G) {
    int r = m->a.r;
    const float *sd = T + m->ad[k].a_off;
    fx_sorf_givens_d(G, sd + 1, r);
    for (size_t i = 0; i < (size_t)r * r; i++) L[i] = (add ? L[i] : 0) + w * (double)sd[0] * G[i];
}

void fx_sorf_delta_w(const fx_model *m, int k, const float *train, double *dW) {
    const fx_adapted *ad = &m->ad[k];
    int r = m->a.r, out = ad->out, in = ad->in;
    double *L = fx_malloc(sizeof(double) * ((size_t)2 * r * r + (size_t)out * r)), *G = L + (size_t)r * r, *P = G + (size_t)r * r;
    lambda_of(m, k, train, L, 1.0, 0, G);
    sorf_p(m, k, train + ad->b_off, L, P);
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) {
            double acc = 0;
            for (int j = 0; j < r; j++) acc += P[(size_t)o * r + j] * m->vera_A[(size_t)j * m->vera_in + i];
            dW[(size_t)o * in + i] = acc;
        }
    free(L);
}

/* U (out, r) with U A_l = the exact mean of the clients' updates minus the global update:
 *     U = P(b_c, sum_i w_i Lambda_i) - P(b_g, Lambda_g)
 * b_c the clients' shared Gamma (client 0's), b_g, Lambda_g the global (refitted) state. With PREV in
 * place of the global state, the round's own move: the aggregation error's denominator. */
void fx_sorf_residual_d(const fx_model *m, int k, const float *const *clients, const double *w, int n,
                        const float *global, double *U) {
    const fx_adapted *ad = &m->ad[k];
    int r = m->a.r, out = ad->out;
    size_t rr = (size_t)r * r;
    double *L = fx_malloc(sizeof(double) * (3 * rr + (size_t)out * r)), *Lg = L + rr, *G = Lg + rr, *Pg = G + rr;
    for (int i = 0; i < n; i++) lambda_of(m, k, clients[i], L, w[i], i > 0, G);
    sorf_p(m, k, clients[0] + ad->b_off, L, U);
    lambda_of(m, k, global, Lg, 1.0, 0, G);
    sorf_p(m, k, global + ad->b_off, Lg, Pg);
    for (size_t j = 0; j < (size_t)out * r; j++) U[j] -= Pg[j];
    free(L);
}

/* --- small dense linear algebra in double for the refit: thin QR by Gram-Schmidt run twice, one-sided
 * Jacobi SVD, a determinant's sign. Matrices are row-major unless named by columns. */

/* C holds R columns of length L (column j at C + j L); on return the orthonormal Q, R (r, r) upper. A
 * column that vanishes gives a zero column of Q and a zero diagonal. */
static void qr_cols(double *C, double *R, int L, int r) {
    for (int i = 0; i < r * r; i++) R[i] = 0;
    for (int j = 0; j < r; j++) {
        double *x = C + (size_t)j * L;
        for (int pass = 0; pass < 2; pass++)
            for (int i = 0; i < j; i++) {
                const double *q = C + (size_t)i * L;
                double d = 0;
                for (int t = 0; t < L; t++) d += q[t] * x[t];
                R[(size_t)i * r + j] += d;
                for (int t = 0; t < L; t++) x[t] -= d * q[t];
            }
        double nrm = 0;
        for (int t = 0; t < L; t++) nrm += x[t] * x[t];
        nrm = sqrt(nrm);
        R[(size_t)j * r + j] = nrm;
        for (int t = 0; t < L; t++) x[t] = nrm > 0 ? x[t] / nrm : 0;
    }
}

/* M (r, r) = U diag(sv) V^T, singular values descending; U, V (r, r) row-major. M is overwritten. */
static void svd_jacobi(double *M, int r, double *U, double *sv, double *V) {
    for (int i = 0; i < r * r; i++) V[i] = 0;
    for (int i = 0; i < r; i++) V[(size_t)i * r + i] = 1;
    for (int sweep = 0; sweep < 60; sweep++) {
        int rotated = 0;
        for (int i = 0; i < r - 1; i++)
            for (int j = i + 1; j < r; j++) {
                double a = 0, b = 0, g = 0;
                for (int t = 0; t < r; t++) {
                    double x = M[(size_t)t * r + i], y = M[(size_t)t * r + j];
                    a += x * x; b += y * y; g += x * y;
                }
                if (fabs(g) <= 1e-15 * sqrt(a * b) || g == 0) continue;
                rotated = 1;
                double zeta = (b - a) / (2 * g), t = (zeta >= 0 ? 1.0 : -1.0) / (fabs(zeta) + sqrt(1 + zeta * zeta));
                double c = 1 / sqrt(1 + t * t), s = c * t;
                for (int q = 0; q < r; q++) {
                    double *mi = M + (size_t)q * r + i, *mj = M + (size_t)q * r + j;
                    double x = *mi, y = *mj;
                    *mi = c * x - s * y; *mj = s * x + c * y;
                    double *vi = V + (size_t)q * r + i, *vj = V + (size_t)q * r + j;
                    x = *vi; y = *vj;
                    *vi = c * x - s * y; *vj = s * x + c * y;
                }
            }
        if (!rotated) break;
    }
    int *ord = fx_malloc(sizeof(int) * (size_t)r);
    double *nr = fx_malloc(sizeof(double) * (size_t)r);
    for (int j = 0; j < r; j++) {
        double s2 = 0;
        for (int t = 0; t < r; t++) s2 += M[(size_t)t * r + j] * M[(size_t)t * r + j];
        nr[j] = sqrt(s2);
        ord[j] = j;
    }
    for (int i = 1; i < r; i++) /* descending, stable */
        for (int j = i; j > 0 && nr[ord[j]] > nr[ord[j - 1]]; j--) { int x = ord[j]; ord[j] = ord[j - 1]; ord[j - 1] = x; }
    double *Vs = fx_malloc(sizeof(double) * (size_t)r * r);
    memcpy(Vs, V, sizeof(double) * (size_t)r * r);
    for (int jj = 0; jj < r; jj++) {
        int j = ord[jj];
        sv[jj] = nr[j];
        for (int t = 0; t < r; t++) {
            U[(size_t)t * r + jj] = nr[j] > 0 ? M[(size_t)t * r + j] / nr[j] : 0;
            V[(size_t)t * r + jj] = Vs[(size_t)t * r + j];
        }
    }
    free(Vs); free(nr); free(ord);
}

/* The sign of det(X), X (r, r) overwritten (Gaussian elimination with partial pivoting). */
static int det_sign(double *X, int r) {
    int sign = 1;
    for (int c = 0; c < r; c++) {
        int p = c;
        for (int i = c + 1; i < r; i++) if (fabs(X[(size_t)i * r + c]) > fabs(X[(size_t)p * r + c])) p = i;
        if (X[(size_t)p * r + c] == 0) return 0;
        if (p != c) {
            sign = -sign;
            for (int j = 0; j < r; j++) { double t = X[(size_t)c * r + j]; X[(size_t)c * r + j] = X[(size_t)p * r + j]; X[(size_t)p * r + j] = t; }
        }
        if (X[(size_t)c * r + c] < 0) sign = -sign;
        for (int i = c + 1; i < r; i++) {
            double f = X[(size_t)i * r + c] / X[(size_t)c * r + c];
            for (int j = c; j < r; j++) X[(size_t)i * r + j] -= f * X[(size_t)c * r + j];
        }
    }
    return sign;
}

/* s, theta of the scaled rotation nearest Lt (r, r) as the VeRA fork finds it: Lt = P diag(D) Q^T, made a
 * proper rotation (P's last column and D's last value negated when det(P Q^T) < 0), O = P Q^T,
 * s = mean(D), theta by eliminating O's subdiagonal in the order (0,1), (0,2), ..., each
 * theta = atan2(W[q][p], W[p][p]) (its decompose_orthogonal_to_givens). Lt is overwritten; W: 4 r r. */
static void fit_rotation(double *Lt, int r, float *sd, double *W) {
    size_t rr = (size_t)r * r;
    double *Pt = W, *Qt = Pt + rr, *O = Qt + rr, *G = O + rr, *D = fx_malloc(sizeof(double) * (size_t)r);
    svd_jacobi(Lt, r, Pt, D, Qt);
    for (int pass = 0; pass < 2; pass++) {
        for (int a = 0; a < r; a++)
            for (int b = 0; b < r; b++) {
                double acc = 0;
                for (int c = 0; c < r; c++) acc += Pt[(size_t)a * r + c] * Qt[(size_t)b * r + c];
                O[(size_t)a * r + b] = acc;
            }
        memcpy(G, O, sizeof(double) * rr);
        if (pass == 1 || det_sign(G, r) >= 0) break;
        for (int a = 0; a < r; a++) Pt[(size_t)a * r + r - 1] = -Pt[(size_t)a * r + r - 1];
        D[r - 1] = -D[r - 1];
    }
    double mean = 0;
    for (int j = 0; j < r; j++) mean += D[j];
    sd[0] = (float)(mean / r);
    int kk = 0;
    for (int p = 0; p < r - 1; p++)
        for (int q = p + 1; q < r; q++, kk++) {
            double t = atan2(O[(size_t)q * r + p], O[(size_t)p * r + p]), c = cos(t), s = sin(t);
            sd[1 + kk] = (float)t;
            double *wp = O + (size_t)p * r, *wq = O + (size_t)q * r;
            for (int j = 0; j < r; j++) { double a = wp[j], b = wq[j]; wp[j] = c * a + s * b; wq[j] = -s * a + c * b; }
        }
    free(D);
}

/* The VeRA fork's server (its aggregate_models_sorf_vera) for layer K, into GLOBAL's b, s, theta:
 *   dW = P(b_c, mean_i Lambda_i) A_l, its rank-r SVD U diag(sv) V^T;
 *   b: per 2x2 block j the least-squares (a_j, c_j) of Gamma_j B_l[2j:2j+2] = T[2j:2j+2], T = S^T U diag(sv)
 *      (closed form: the two columns of the system are orthogonal with equal norms);
 *   s, theta: Lambda_t = V^T pinv(A_l) = P_t diag(D) Q_t^T, made a proper rotation (the last column of P_t
 *      and D_last negated when det(P_t Q_t^T) < 0), O = P_t Q_t^T, s = mean(D), theta by eliminating
 *      O's subdiagonal in the order (0,1), (0,2), ..., each theta = atan2(W[q][p], W[p][p]).
 * The SVD comes from the factors: P = Q1 R1, A_l^T = Q2 R2, R1 R2^T = Um diag(sv) Vm^T, U = Q1 Um,
 * V = Q2 Vm, so Lambda_t = Vm^T R2^{-T}; the vectors' signs are fixed (each right one's largest entry
 * positive: the fork takes LAPACK's, and the fit depends on them). Approximate: the refit's dW differs
 * from the mean's (fedex-sorf-vera adds the difference to W0). POLAR (--sorf-refit polar) keeps b and
 * fits only the mean Lambda's nearest scaled rotation, a smaller difference. Needs r <= in and r <= out
 * (fx_adapter_build checks it). */
void fx_sorf_refit(const fx_model *m, int k, const float *const *clients, const double *w, int n, float *global,
                   int polar) {
    const fx_adapted *ad = &m->ad[k];
    int r = m->a.r, out = ad->out, in = ad->in, h = out / 2;
    size_t rr = (size_t)r * r;
    double *L = fx_malloc(sizeof(double) * (9 * rr + (size_t)(3 * out + in) * r + (size_t)r + 2 * (size_t)out));
    double *G = L + rr, *R1 = G + rr, *R2 = R1 + rr, *Um = R2 + rr, *Vm = Um + rr, *Lt = Vm + rr, *Pt = Lt + rr, *Qt = Pt + rr;
    double *P = Qt + rr, *Q1 = P + (size_t)out * r, *Q2 = Q1 + (size_t)out * r, *T = Q2 + (size_t)in * r;
    double *sv = T + (size_t)out * r, *col = sv + r, *tmp = col + out;
    for (int i = 0; i < n; i++) lambda_of(m, k, clients[i], L, w[i], i > 0, G);
    if (polar) { /* Gamma kept, Lambda' the scaled rotation nearest the mean Lambda */
        memcpy(global + ad->b_off, clients[0] + ad->b_off, sizeof(float) * (size_t)out);
        fit_rotation(L, r, global + ad->a_off, R1); /* R1 .. Lt: 4 r r */
        free(L);
        return;
    }
    sorf_p(m, k, clients[0] + ad->b_off, L, P);
    for (int j = 0; j < r; j++) {
        for (int o = 0; o < out; o++) Q1[(size_t)j * out + o] = P[(size_t)o * r + j];
        for (int x = 0; x < in; x++) Q2[(size_t)j * in + x] = m->vera_A[(size_t)j * m->vera_in + x];
    }
    qr_cols(Q1, R1, out, r);
    qr_cols(Q2, R2, in, r);
    double *M = Lt; /* R1 R2^T, overwritten by the SVD */
    for (int a = 0; a < r; a++)
        for (int b = 0; b < r; b++) {
            double acc = 0;
            for (int c = 0; c < r; c++) acc += R1[(size_t)a * r + c] * R2[(size_t)b * r + c];
            M[(size_t)a * r + b] = acc;
        }
    svd_jacobi(M, r, Um, sv, Vm);
    /* the singular vectors' signs, fixed: each right one (V = Q2 Vm) with its largest entry positive */
    for (int j = 0; j < r; j++) {
        double big = 0;
        for (int x = 0; x < in; x++) {
            double v = 0;
            for (int c = 0; c < r; c++) v += Q2[(size_t)c * in + x] * Vm[(size_t)c * r + j];
            if (fabs(v) > fabs(big)) big = v;
        }
        if (big < 0)
            for (int c = 0; c < r; c++) { Um[(size_t)c * r + j] = -Um[(size_t)c * r + j]; Vm[(size_t)c * r + j] = -Vm[(size_t)c * r + j]; }
    }
    /* b: T (out, r) columns = S^T (Q1 Um[:, j]) sv_j */
    float *bg = global + ad->b_off;
    for (int j = 0; j < r; j++) {
        for (int o = 0; o < out; o++) {
            double acc = 0;
            for (int c = 0; c < r; c++) acc += Q1[(size_t)c * out + o] * Um[(size_t)c * r + j];
            col[o] = acc * sv[j];
        }
        fx_sorf_mix_d(fx_sorf_of(m, out), col, tmp, 1);
        for (int o = 0; o < out; o++) T[(size_t)o * r + j] = col[o];
    }
    for (int j = 0; j < h; j++) {
        double nn = 0, ac = 0, cc = 0;
        for (int l = 0; l < r; l++) {
            double b0 = m->vera_B[(size_t)(2 * j) * r + l], b1 = m->vera_B[(size_t)(2 * j + 1) * r + l];
            double t0 = T[(size_t)(2 * j) * r + l], t1 = T[(size_t)(2 * j + 1) * r + l];
            nn += b0 * b0 + b1 * b1;
            ac += t0 * b0 + t1 * b1;
            cc += t1 * b0 - t0 * b1;
        }
        bg[j] = nn > 0 ? (float)(ac / nn) : 0.0f;
        bg[h + j] = nn > 0 ? (float)(cc / nn) : 0.0f;
    }
    /* Lambda_t = Vm^T R2^{-T}: R2 Lambda_t^T = Vm, column by column of Vm (back substitution) */
    for (int c = 0; c < r; c++)
        for (int i = r - 1; i >= 0; i--) {
            double acc = Vm[(size_t)i * r + c];
            for (int t = i + 1; t < r; t++) acc -= R2[(size_t)i * r + t] * Lt[(size_t)c * r + t];
            Lt[(size_t)c * r + i] = R2[(size_t)i * r + i] != 0 ? acc / R2[(size_t)i * r + i] : 0;
        }
    fit_rotation(Lt, r, global + ad->a_off, Pt); /* Pt, Qt, P, Q1: room for 4 r r (r <= out) */
    free(L);
}
