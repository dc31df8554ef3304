/* optim.c: the optimizer step on a model's backend ops: gradient clipping at a total norm, AdamW (its
 * scalars formed once per step in double, as PyTorch forms them) and transformers' linear schedule. No
 * forward or backward (model.c) and no aggregation (agg.c). */
#include "fedex.h"

#include <math.h>

/* ============================================================================================
 * gradient clipping, AdamW and the learning-rate schedule
 * ============================================================================================ */

/* torch.nn.utils.clip_grad_norm_(trainable, max_norm): total = sqrt(sum over tensors of ||g||^2), then
 * every gradient times min(1, max_norm / (total + 1e-6)). Frozen tensors' gradients are zero, so they
 * count nothing. Returns the total norm before clipping. */
double fx_clip_grad_norm(fx_model *m, float max_norm) {
    double ss = 0;
    for (int i = 0; i < m->train.nt; i++)
        if (!m->train.t[i].frozen) ss += m->ops->sumsq(m->grad + m->train.t[i].off, m->train.t[i].n);
    double total = sqrt(ss), coef = (double)max_norm / (total + 1e-6);
    if (coef < 1)
        for (int i = 0; i < m->train.nt; i++)
            if (!m->train.t[i].frozen) m->ops->scale(m->grad + m->train.t[i].off, (float)coef, m->train.t[i].n);
    return total;
}

void fx_adamw_reset(fx_model *m) {
    m->ops->zero(m->adam_m, m->train.n);
    m->ops->zero(m->adam_v, m->train.n);
    m->adam_t = 0;
}

/* torch.optim.AdamW (torch 1.13, single-tensor path), step t counted from 1:
 *   p *= 1 - lr wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
 *   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
 * Scalars are formed here once, in double (Python floats), and used as fp32 by the op, as PyTorch does. */
void fx_adamw_update(fx_model *m, float lr, float weight_decay) {
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    if (m->c.max_grad_norm > 0) fx_clip_grad_norm(m, m->c.max_grad_norm);
    int t = ++m->adam_t;
    double bc1 = 1 - pow(b1, t), bc2 = 1 - pow(b2, t);
    fx_adamw_scalars s = {.step = (float)((double)lr / bc1), .bc2s = (float)sqrt(bc2),
                          .decay = (float)(1 - (double)lr * weight_decay), .decay_on = weight_decay != 0,
                          .b1 = (float)b1, .b2 = (float)b2, .c1 = (float)(1 - b1), .c2 = (float)(1 - b2),
                          .eps = (float)eps};
    for (int i = 0; i < m->train.nt; i++) {
        const fx_tensor *tt = &m->train.t[i];
        if (tt->frozen) continue;
        m->ops->adamw(m->train.data + tt->off, m->grad + tt->off, m->adam_m + tt->off, m->adam_v + tt->off, tt->n, &s);
    }
}

/* transformers.get_linear_schedule_with_warmup; STEP = optimizer steps already taken. */
float fx_linear_schedule(int step, int warmup, int total, float lr) {
    if (step < warmup) return (float)((double)lr * step / (warmup > 1 ? warmup : 1));
    double f = (double)(total - step) / (total - warmup > 1 ? total - warmup : 1);
    return (float)((double)lr * (f > 0 ? f : 0));
}
