"""Draw docs/img/lelp_overview.png: what LELP does, in one picture.

    python scripts/draw_overview.py [--out docs/img/lelp_overview.png]

A toy teacher with a 4-d embedding and two classes, each hiding three clusters. The
picture is computed, not drawn by hand: the moments, the null space, the directions
and the targets come from lelp_jax's own core functions.

1. The teacher embedding h(x): the classes separate along the classifier's row space
   (all that KD's two soft-label numbers can convey); the clusters inside each class
   live in the null space of W.
2. After the null-space projection P = I - W^T (W W^T)^+ W, each class's top-S principal
   directions U_c (here S = 2, drawn from the class mean mu_c, scaled by the square root of
   their eigenvalue; Haar-rotated).
3. One example's training targets: the teacher's class probabilities p_c (C = 2 numbers)
   and LELP's C*S = 4 soft targets t_{c,s} = p_c softmax_s(z_{c,.}/beta)_s with
   z_{c,s} = U_c[:, s] . (h - mu_c), which sum over s to p_c.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

C, S, D = 2, 2, 4
BETA, TAU = 1.0, 1.0


def toy_teacher(seed: int = 0, per_cluster: int = 120) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings h (N, D), labels (N,), head W (C, D), bias b (C,).

    Dims 0-1 are the row space of W (dim 0 carries the class); dims 2-3 hold three
    clusters per class (the null space of W; the two classes' cluster sets sit apart
    there so that both fits can be drawn in one panel).
    """
    rng = np.random.default_rng(seed)
    W = np.array([[1.5, 0.4, 0.0, 0.0], [-1.5, 0.4, 0.0, 0.0]])
    b = np.zeros(C)
    hs, ys = [], []
    for c in range(C):
        for k in range(3):
            angle = 2 * np.pi * k / 3 + c * np.pi / 3
            centre = np.array([1.2 * (1 - 2 * c), 0.0, 2.6 * (2 * c - 1) + 1.7 * np.cos(angle),
                               1.7 * np.sin(angle)])
            hs.append(centre + rng.normal(scale=[0.6, 0.4, 0.45, 0.45], size=(per_cluster, D)))
            ys.append(np.full(per_cluster, c))
    return np.concatenate(hs).astype(np.float32), np.concatenate(ys), W.astype(np.float32), b.astype(np.float32)


def draw(out: str | Path) -> Path:
    import jax

    jax.config.update("jax_platforms", "cpu")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import lelp_jax as lj

    h, y, W, b = toy_teacher()
    logits = h @ W.T + b
    moments = lj.update_moments(lj.init_moments(C, D), h, y.astype(np.int32))
    proj = lj.fit_projections(moments, classifier_weights=W, num_subclasses=S, key=0)
    P = np.asarray(lj.null_space_projector(W))
    U, mu, ev = np.asarray(proj.directions), np.asarray(proj.means), np.asarray(proj.eigenvalues)
    targets = np.asarray(lj.subclass_targets(proj, h, logits, beta=BETA, tau=TAU))

    colours = ("tab:blue", "tab:orange")
    light = (("#9ecae1", "#3182bd"), ("#fdd0a2", "#e6550d"))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4), gridspec_kw={"width_ratios": [1, 1, 1.15]})

    ax = axes[0]
    for c in range(C):
        ax.scatter(h[y == c, 0], h[y == c, 3], s=4, alpha=0.5, color=colours[c], label=f"class {c}")
    ax.axvline(0, color="k", lw=1, ls="--")
    ax.set(title="1. teacher embedding h(x)", xlabel="row space of W: what KD's p_c conveys",
           ylabel="a null-space coordinate of W")
    ax.text(0.02, 0.02, "decision boundary - - -", transform=ax.transAxes, fontsize=8)
    ax.legend(loc="upper right", fontsize=8, markerscale=3)

    ax = axes[1]
    ph = h @ P  # P is symmetric
    for c in range(C):
        ax.scatter(ph[y == c, 2], ph[y == c, 3], s=4, alpha=0.35, color=colours[c])
        m = mu[c] @ P
        for s in range(S):
            v = U[c][:, s] * 2 * np.sqrt(max(ev[c, s], 0.0))
            ax.annotate("", xy=(m[2] + v[2], m[3] + v[3]), xytext=(m[2], m[3]),
                        arrowprops=dict(arrowstyle="-|>", lw=2.2, color=light[c][s]))
            ax.text(m[2] + 1.08 * v[2], m[3] + 1.08 * v[3], f"U{c},{s}", fontsize=9, color=light[c][s],
                    ha="center", va="center", weight="bold")
        ax.plot(m[2], m[3], marker="x", color="k", ms=8)
    ax.set(title=f"2. null-space projection P h, per-class PCA (S={S})", xlabel="null-space coordinate 1",
           ylabel="null-space coordinate 2")
    ax.set_aspect("equal", adjustable="datalim")

    ax = axes[2]
    p0 = targets[:, :S].sum(-1)
    share = targets[:, 0] / p0
    # a class-0 example the teacher is not sure of (p_0 about 0.75), split about 65/35
    i = int(np.argmin(np.where(y == 0, np.abs(share - 0.65) + np.abs(p0 - 0.75), np.inf)))
    p = np.asarray(jax.nn.softmax(logits[i] / TAU))
    ax.bar([0, 1], p, color=colours, width=0.7)
    xs = np.arange(C * S) + 3
    ax.bar(xs, targets[i], color=[light[c][s] for c in range(C) for s in range(S)], width=0.7)
    ax.set_xticks(list(range(2)) + list(xs))
    ax.set_xticklabels(["p_0", "p_1"] + [f"t{c},{s}" for c in range(C) for s in range(S)])
    ax.axvline(2, color="k", lw=0.8)
    ax.set(title="3. one example's targets: C = 2 -> C*S = 4", ylabel="probability", ylim=(0, 1.05))
    ax.text(0.97, 0.95, "t_cs = p_c softmax_s(z_c,s / beta)\nz_c,s = U_c,s . (h - mu_c)\nsum_s t_cs = p_c",
            transform=ax.transAxes, ha="right", va="top", fontsize=9,
            bbox=dict(boxstyle="round", fc="white", ec="0.7"))
    ax.text(0.5, -0.14, "teacher (KD)", fontsize=8, ha="center", transform=ax.get_xaxis_transform())
    ax.text(4.5, -0.14, "LELP: student head has C*S logits", fontsize=8, ha="center",
            transform=ax.get_xaxis_transform())

    fig.suptitle("LELP: split each class into pseudo-subclasses along directions of the teacher embedding "
                 "that the classifier ignores", fontsize=11)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "img" /
                                             "lelp_overview.png"))
    print(draw(parser.parse_args().out))


if __name__ == "__main__":
    main()
