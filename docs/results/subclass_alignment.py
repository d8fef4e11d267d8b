"""Do LELP's pseudo-subclasses line up with the real fine classes? (Markdown table)

    python docs/results/subclass_alignment.py WORKDIR FINE_LABELS.npy > docs/results/NAME/alignment.md

FINE_LABELS.npy: the fine label of train example i at row i, in the data source's order
(tfds shuffles at preparation: read it from `lelp_jax.data.load_split(config.data, "train")`).

Reads a cached-teacher workdir (teacher_outputs/train.npz: embeddings h, logits) and its
projections (projections.npz = lelp, projections_METHOD.npz = the others), plus the
fine label of every train example (row = example index). Per class c, over the train
examples of coarse class c (fine >= 5 for Fashion-MNIST 0-4 vs 5-9):
  - subclass = argmax_s z_{c,s}, z = (h - mu_c) . U_c[:, s]   (LELP's hardest assignment)
  - NMI(subclass, fine label) (sklearn, arithmetic mean): 0 = unrelated, 1 = identical
  - linear probe: 5-fold logistic-regression accuracy of the fine label from h, and
    from the S projections z only — how much subclass information the teacher's
    embedding holds, and how much of it the S directions keep.
Chance for the probe = share of the largest fine class within c.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import normalized_mutual_info_score
from sklearn.model_selection import cross_val_score
from sklearn.preprocessing import StandardScaler
from sklearn.pipeline import make_pipeline


def probe(x: np.ndarray, y: np.ndarray) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    return float(np.mean(cross_val_score(model, x, y, cv=5)))


def main(workdir: str, fine_path: str, coarse_rule: str = "ge5") -> None:
    wd = Path(workdir)
    cache = np.load(wd / "teacher_outputs" / "train.npz")
    h = cache["embeddings"].astype(np.float64)
    fine = np.load(fine_path)[: len(h)]
    coarse = (fine >= 5).astype(int) if coarse_rule == "ge5" else fine % 2
    projections = {"lelp": wd / "projections.npz"}
    projections.update({p.stem.split("_", 1)[1]: p for p in sorted(wd.glob("projections_*.npz"))})
    print("| class | n | chance | probe on h (D dims) | method | NMI(argmax z, fine) | probe on z (S dims) |")
    print("|---|---|---|---|---|---|---|")
    for c in np.unique(coarse):
        rows = coarse == c
        hc, yc = h[rows], fine[rows]
        chance = np.bincount(yc).max() / len(yc)
        p_h = probe(hc, yc)
        for name, path in projections.items():
            pr = np.load(path)
            u, mu = pr["directions"][c].astype(np.float64), pr["means"][c].astype(np.float64)
            z = (hc - mu) @ u
            nmi = normalized_mutual_info_score(yc, z.argmax(axis=1))
            print(f"| {c} | {len(yc)} | {100 * chance:.1f}% | {100 * p_h:.1f}% | {name} | {nmi:.3f} | "
                  f"{100 * probe(z, yc):.1f}% |")


if __name__ == "__main__":
    main(*sys.argv[1:])
