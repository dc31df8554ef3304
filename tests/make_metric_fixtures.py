#!/usr/bin/python3
"""tests/make_metric_fixtures.py: golden values for glue.c's metrics, computed by sklearn and scipy.
Writes tests/fixtures/metrics_glue.txt: classification cases (predictions, gold labels, accuracy, F1 of
class 1, Matthews correlation) and regression cases (x, y, Pearson, Spearman), including ties and the
degenerate cases where sklearn falls back to 0 and scipy returns nan. Run: /usr/bin/python3 <this file>."""
import os
import warnings

import numpy as np
import scipy
import scipy.stats
import sklearn
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

warnings.simplefilter("ignore")  # the zero-division and constant-input warnings are the cases we want
rng = np.random.default_rng(20240607)
out = []


def cls_case(name, pred, gold):
    pred, gold = np.asarray(pred, dtype=np.int64), np.asarray(gold, dtype=np.int64)
    binary = set(pred.tolist()) | set(gold.tolist()) <= {0, 1}
    acc = accuracy_score(gold, pred)
    # F1 of class 1. For two classes this is average="binary", pos_label=1, exactly what the glue metric
    # uses; for three classes, class 1's one-vs-rest F1.
    f1 = f1_score(gold, pred) if binary else f1_score(gold, pred, labels=[1], average=None)[0]
    mcc = matthews_corrcoef(gold, pred)
    out.append(f"cls {name} {len(pred)}")
    out.append("p " + " ".join(map(str, pred.tolist())))
    out.append("g " + " ".join(map(str, gold.tolist())))
    out.append(f"m {acc!r} {float(f1)!r} {float(mcc)!r}")


def reg_case(name, x, y):
    # Values are float32 (what a model emits); written with 9 significant digits, which a C strtof reads
    # back to the same float32. The metrics are taken on those float32 values widened to float64.
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    y = np.asarray(y, dtype=np.float32).astype(np.float64)
    p = scipy.stats.pearsonr(x, y)[0]
    s = scipy.stats.spearmanr(x, y)[0]
    out.append(f"reg {name} {len(x)}")
    out.append("x " + " ".join("%.9g" % v for v in x))
    out.append("y " + " ".join("%.9g" % v for v in y))
    out.append(f"m {float(p)!r} {float(s)!r}")


# ---------------------------------------------------------------- classification
g = rng.integers(0, 2, 60)
cls_case("random60", rng.integers(0, 2, 60), g)
g = rng.integers(0, 2, 500)
p = np.where(rng.random(500) < 0.8, g, 1 - g)            # a decent classifier
cls_case("good500", p, g)
g = (rng.random(300) < 0.1).astype(int)                    # rare positives, CoLA-like imbalance reversed
cls_case("rare300", np.where(rng.random(300) < 0.9, g, 1 - g), g)
cls_case("perfect", [0, 1, 1, 0, 1], [0, 1, 1, 0, 1])
cls_case("inverted", [1, 0, 0, 1, 0, 1], [0, 1, 1, 0, 1, 0])
cls_case("gold_all_one", [1, 0, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1, 1])
cls_case("pred_all_one", [1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 0, 1])
cls_case("pred_all_zero", [0, 0, 0, 0, 0], [1, 0, 1, 0, 0])
cls_case("all_zero", [0, 0, 0, 0], [0, 0, 0, 0])         # F1 undefined: sklearn gives 0
cls_case("single", [1], [0])
g = rng.integers(0, 3, 90)
cls_case("three_class90", np.where(rng.random(90) < 0.6, g, rng.integers(0, 3, 90)), g)

# ---------------------------------------------------------------- regression
x = rng.normal(size=100)
reg_case("normal100", x, 0.7 * x + 0.5 * rng.normal(size=100))
y = np.round(rng.uniform(0, 5, 200) * 5) / 5                # STS-B-like scores with many ties
reg_case("ties200", np.round(y + rng.normal(0, 0.8, 200), 1), y)
reg_case("heavy_ties", [1, 1, 2, 2, 2, 3, 3, 1, 2, 3], [0, 1, 1, 0, 2, 2, 2, 0, 1, 2])
x = rng.uniform(-2, 2, 50)
reg_case("monotone", x, np.exp(x))                          # Spearman 1, Pearson below 1
reg_case("anti", [1, 2, 3, 4, 5], [10, 8, 6, 4, 2])
reg_case("offset", 1e4 + rng.normal(0, 0.01, 40), rng.normal(size=40))
reg_case("two", [0.5, 1.5], [3.0, 1.0])
reg_case("const_x", [2, 2, 2, 2], [1, 2, 3, 4])            # scipy: nan
reg_case("const_y", [1, 2, 3, 4], [0, 0, 0, 0])

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "metrics_glue.txt")
with open(path, "w") as f:
    f.write(f"# tests/make_metric_fixtures.py: sklearn {sklearn.__version__}, scipy {scipy.__version__}, "
            f"numpy {np.__version__}\n")
    f.write("\n".join(out) + "\n")
print(path, len(out), "lines")
