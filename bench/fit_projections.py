"""LELP fit (streaming update_moments + batched eigh fit_projections) vs scikit-learn PCA per class.

    python bench/fit_projections.py [--smoke] [--repeats K] [--big-repeats K] [--max-sklearn-n N]

What is compared, per configuration (N examples, D dims, C classes, S = --num-subclasses):
- lelp_jax: the embeddings arrive batch by batch (--batch-size rows; the last batch
  padded with mask 0) and are never held: ``jax.jit(update_moments)`` per batch, then
  ``fit_projections`` (null space of a random C x D classifier W, one batched eigh,
  Haar rotation). Timed: the update calls and the fit (each blocked until ready);
  not timed: generating each batch (the same cost for both sides).
- scikit-learn: the whole (N, D) float32 matrix is held, projected once onto the
  null space of the same W (X P, not timed: it favours sklearn), then
  ``PCA(n_components=S).fit`` on each class's rows (timed, class selection included).
  sklearn's 'auto' solver picks 'covariance_eigh' here (N >> D, D < 1000): the same
  algorithm, so the comparison is of implementations, not of algorithms.
Both sides see identical data (batch b generated from seed (seed, b)); the leading
eigenvalues are compared (max relative difference; sklearn's ddof=1 rescaled to
ddof=0) and so are the fitted subspaces (spectral norm of the difference of the
projectors onto span U_c and span V_c; the Haar rotation does not change the span).

Peak memory: each (configuration, side) runs in a fresh subprocess; after imports
and the warm-up (JIT compilation) the process's peak RSS is reset (Linux
/proc/self/clear_refs = 5) and the reported number is the peak RSS reached during the
timed repeats minus the RSS at the reset. It counts everything resident: NumPy
arrays, XLA buffers, allocator pools, and for sklearn the held data (N * D * 4 bytes).
Timing: median over --repeats (--big-repeats for N > 100k) after one warm-up run.

On an accelerator, --data-on-device generates each batch there (``jax.random``, the same
distribution, not the same numbers: the sklearn comparison is then off) so that the
timing is the fit's own, as in the pipeline, where the teacher's embeddings are
already on the device; without it every batch is also copied from the host (timed).
The device's peak memory (``Device.memory_stats()['peak_bytes_in_use']``, GPU/TPU
only; n/a on CPU) is reported next to the process's peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

FULL_SIZES = (10_000, 37_000, 100_000, 1_600_000)
FULL_DIMS = (384, 768)
FULL_CLASSES = (2, 5)


# ----------------------------------------------------------------------------- data (both sides)


def class_scales(d: int, c: int, seed: int) -> np.ndarray:
    """Per-class standard deviations (C, D): a geometric decay 1 -> 0.03, permuted per class,
    so every class has its own distinct, well-separated principal directions."""
    base = np.geomspace(1.0, 0.03, d).astype(np.float32)
    rng = np.random.default_rng([seed, 1])
    return np.stack([base[rng.permutation(d)] for _ in range(c)])


def class_means(d: int, c: int, seed: int) -> np.ndarray:
    return (3.0 * np.random.default_rng([seed, 2]).standard_normal((c, d))).astype(np.float32)


def classifier(d: int, c: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 3]).standard_normal((c, d)).astype(np.float32)


def make_batch(seed: int, b: int, rows: int, mean: np.ndarray, scale: np.ndarray):
    """Batch ``b``: labels uniform over C, h = mean[y] + scale[y] * N(0, I) (float32)."""
    rng = np.random.default_rng([seed, 100, b])
    y = rng.integers(0, mean.shape[0], rows).astype(np.int32)
    h = rng.standard_normal((rows, mean.shape[1]), dtype=np.float32)
    h *= scale[y]
    h += mean[y]
    return h, y


def batch_rows(n: int, batch_size: int) -> list[int]:
    return [min(batch_size, n - start) for start in range(0, n, batch_size)]


# ----------------------------------------------------------------------------- workers (subprocesses)


def device_batch_fn(mean: np.ndarray, scale: np.ndarray, batch_size: int):
    """Jitted ``(seed, b, rows) -> (h, y, mask)``: make_batch's distribution drawn on the device, padded."""
    import jax
    import jax.numpy as jnp

    mean_d, scale_d = jnp.asarray(mean), jnp.asarray(scale)

    @jax.jit
    def gen(seed, b, rows):
        ky, kh = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), b))
        y = jax.random.randint(ky, (batch_size,), 0, mean_d.shape[0], jnp.int32)
        h = mean_d[y] + scale_d[y] * jax.random.normal(kh, (batch_size, mean_d.shape[1]), jnp.float32)
        mask = (jnp.arange(batch_size) < rows).astype(jnp.float32)
        return h * mask[:, None], y, mask

    return gen


def device_peak_mb() -> float:
    """Peak device memory in use since the process started (GPU/TPU), in MB; NaN where not reported (CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 1e6 if "peak_bytes_in_use" in stats else float("nan")


def worker_lelp(a) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from lelp_jax.core.projections import fit_projections
    from lelp_jax.core.statistics import init_moments, update_moments

    n, d, c, s, bs = a.n, a.d, a.c, a.s, a.batch_size
    mean, scale, w = class_means(d, c, a.seed), class_scales(d, c, a.seed), classifier(d, c, a.seed)
    w_dev = jnp.asarray(w)
    update = jax.jit(update_moments)
    gen = device_batch_fn(mean, scale, bs) if getattr(a, "data_on_device", False) else None

    def run() -> tuple[float, Any]:
        moments = init_moments(c, d)
        elapsed = 0.0
        for b, rows in enumerate(batch_rows(n, bs)):
            if gen is not None:
                h, y, mask = jax.block_until_ready(gen(a.seed, b, rows))
            else:
                h, y = make_batch(a.seed, b, rows, mean, scale)
                mask = np.ones(bs, np.float32)
                if rows < bs:  # pad the last batch to the compiled shape; padding rows weigh 0
                    mask[rows:] = 0
                    h = np.concatenate([h, np.zeros((bs - rows, d), np.float32)])
                    y = np.concatenate([y, np.zeros(bs - rows, np.int32)])
            t0 = time.perf_counter()
            moments = update(moments, h, y, mask=mask)
            jax.block_until_ready(moments)
            elapsed += time.perf_counter() - t0
        t0 = time.perf_counter()
        proj = fit_projections(moments, classifier_weights=w_dev, num_subclasses=s, key=0)
        jax.block_until_ready(proj)
        return elapsed + time.perf_counter() - t0, proj

    # Warm-up: compile update (one batch shape) and the fit, outside the measurement.
    moments = update(init_moments(c, d), *make_batch(a.seed, 0, bs, mean, scale), mask=np.ones(bs, np.float32))
    jax.block_until_ready(fit_projections(moments, classifier_weights=w_dev, num_subclasses=s, key=0))
    base = C.peak_rss_reset()
    times = []
    for _ in range(a.repeats):
        t, proj = run()
        times.append(t)
    peak = C.peak_rss_delta_mb(base)
    return {"times": times, "peak_mb": peak, "device_peak_mb": device_peak_mb(),
            "eigenvalues": np.asarray(proj.eigenvalues[:, :s]).tolist(),
            "directions": np.asarray(proj.directions).tolist(), "counts": np.asarray(proj.counts).tolist()}


def worker_sklearn(a) -> dict[str, Any]:
    from sklearn.decomposition import PCA

    n, d, c, s = a.n, a.d, a.c, a.s
    mean, scale, w = class_means(d, c, a.seed), class_scales(d, c, a.seed), classifier(d, c, a.seed)
    base = C.peak_rss_reset()
    parts = [make_batch(a.seed, b, rows, mean, scale) for b, rows in enumerate(batch_rows(n, a.batch_size))]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    del parts
    # Null-space projector P = I - W^T (W W^T)^+ W, float64 then float32 (not timed).
    w64 = w.astype(np.float64)
    proj = (np.eye(d) - w64.T @ np.linalg.pinv(w64 @ w64.T) @ w64).astype(np.float32)
    xp = x @ proj
    del x

    def run():
        fits = []
        for k in range(c):
            fits.append(PCA(n_components=s, svd_solver=a.solver).fit(xp[y == k]))
        return fits

    run()  # warm-up (imports inside sklearn, BLAS thread start-up)
    times, fits = [], None
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        fits = run()
        times.append(time.perf_counter() - t0)
    peak = C.peak_rss_delta_mb(base)
    counts = [int((y == k).sum()) for k in range(c)]
    ev = [(f.explained_variance_ * (m - 1) / m).tolist() for f, m in zip(fits, counts)]
    return {"times": times, "peak_mb": peak, "eigenvalues": ev, "directions": [f.components_.T.tolist() for f in fits],
            "solver": getattr(fits[0], "_fit_svd_solver", a.solver), "counts": counts}


def run_worker(side: str, *, n: int, d: int, c: int, s: int, batch_size: int, repeats: int, seed: int,
               solver: str, timeout: float, inprocess: bool = False, blas_threads: int = 0,
               data_on_device: bool = False) -> dict[str, Any]:
    """Run one (configuration, side) in a fresh Python process (or here, with ``inprocess``); its result.

    ``blas_threads`` > 0 caps OpenBLAS/OpenMP threads in the worker: both sides' LAPACK
    (sklearn's, and jax's eigh, which calls scipy's OpenBLAS) and sklearn's matmuls.
    """
    if inprocess:
        ns = argparse.Namespace(n=n, d=d, c=c, s=s, batch_size=batch_size, repeats=repeats, seed=seed, solver=solver,
                                data_on_device=data_on_device)
        return worker_lelp(ns) if side == "lelp" else worker_sklearn(ns)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--n", str(n), "--d", str(d), "--c", str(c),
           "--s", str(s), "--batch-size", str(batch_size), "--repeats", str(repeats), "--seed", str(seed),
           "--solver", solver] + (["--data-on-device"] if data_on_device else [])
    env = dict(os.environ)
    if blas_threads > 0:
        env.update({k: str(blas_threads) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"worker {side} n={n} d={d} c={c} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def subspace_distance(u: np.ndarray, v: np.ndarray) -> float:
    """max_c || U_c U_c^T - V_c V_c^T ||_2 (0: same spans; 1: some direction orthogonal)."""
    worst = 0.0
    for uc, vc in zip(u, v):
        diff = uc @ uc.T - vc @ vc.T
        worst = max(worst, float(np.linalg.norm(diff, 2)))
    return worst


def main(argv=None) -> int:
    p = C.base_parser(__doc__.splitlines()[0], default_repeats=3)
    p.add_argument("--big-repeats", type=int, default=1, help="repeats for N > 100k (each takes minutes)")
    p.add_argument("--max-sklearn-n", type=int, default=100_000,
                   help="sklearn must hold N*D*4 bytes: skip it above this N")
    p.add_argument("--batch-size", type=int, default=4096, help="rows per streamed batch (lelp)")
    p.add_argument("--num-subclasses", type=int, default=4, help="S")
    p.add_argument("--sizes", type=int, nargs="*", default=None)
    p.add_argument("--dims", type=int, nargs="*", default=None)
    p.add_argument("--classes", type=int, nargs="*", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--solver", default="auto", help="sklearn PCA svd_solver")
    p.add_argument("--blas-threads", type=int, default=0,
                   help="cap BLAS/LAPACK threads in both workers (0: library default). On a loaded machine "
                        "OpenBLAS's spinning threads can make eigh 100x slower; 1 thread avoids that")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per worker process")
    p.add_argument("--inprocess", action="store_true",
                   help="run the workers in this process (faster start; peak memory then less isolated); "
                        "implied by --smoke")
    p.add_argument("--data-on-device", action="store_true",
                   help="generate the lelp side's batches on the device (accelerators: time the fit, not the "
                        "host-to-device copies); the sklearn comparison then sees other numbers")
    p.add_argument("--worker", choices=("lelp", "sklearn"), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--d", type=int, help=argparse.SUPPRESS)
    p.add_argument("--c", type=int, help=argparse.SUPPRESS)
    p.add_argument("--s", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    C.check_repeats(a.repeats)
    if a.worker:
        result = worker_lelp(a) if a.worker == "lelp" else worker_sklearn(a)
        print(json.dumps(result))
        return 0

    if a.smoke:
        sizes, dims, classes, a.batch_size, a.num_subclasses = (3000,), (32,), (2,), 1024, 2
    else:
        sizes, dims, classes = FULL_SIZES, FULL_DIMS, FULL_CLASSES
    sizes, dims, classes = a.sizes or sizes, a.dims or dims, a.classes or classes
    s = a.num_subclasses
    info = C.machine_info()
    t_start = time.time()
    rows, results = [], []
    for n in sizes:
        for d in dims:
            for c in classes:
                reps = a.repeats if n <= 100_000 else a.big_repeats
                kw = dict(n=n, d=d, c=c, s=s, batch_size=a.batch_size, repeats=reps, seed=a.seed, solver=a.solver,
                          timeout=a.timeout, inprocess=a.inprocess or a.smoke, blas_threads=a.blas_threads,
                          data_on_device=a.data_on_device)
                lelp = run_worker("lelp", **kw)
                data_mb = n * d * 4 / 1e6
                skl = run_worker("sklearn", **kw) if n <= a.max_sklearn_n and not a.data_on_device else None
                t_l = C.median(lelp["times"])
                row = {"n": n, "d": d, "c": c, "lelp_s": t_l, "lelp_peak_mb": lelp["peak_mb"], "repeats": reps,
                       "data_mb": data_mb, "lelp_device_peak_mb": lelp["device_peak_mb"]}
                if skl is not None:
                    t_s = C.median(skl["times"])
                    ev_l, ev_s = np.asarray(lelp["eigenvalues"]), np.asarray(skl["eigenvalues"])
                    row.update(sklearn_s=t_s, sklearn_peak_mb=skl["peak_mb"], speedup=t_s / t_l,
                               eig_rel_diff=float(np.max(np.abs(ev_l - ev_s) / ev_s)),
                               subspace_dist=subspace_distance(np.asarray(lelp["directions"]),
                                                               np.asarray(skl["directions"])),
                               solver=skl["solver"])
                results.append(row)
                na = f"n/a ({data_mb / 1e3:.1f} GB to hold)"
                rows.append([
                    f"{n:,}", d, c, reps, C.fmt(t_l),
                    C.fmt(row["sklearn_s"]) if "sklearn_s" in row else na,
                    f"{row['speedup']:.2f}x" if "sklearn_s" in row else "n/a",
                    C.fmt(lelp["peak_mb"]), C.fmt(lelp["device_peak_mb"]),
                    C.fmt(row["sklearn_peak_mb"]) if "sklearn_s" in row else "n/a",
                    C.fmt(data_mb),
                    f"{row['eig_rel_diff']:.1e} / {row['subspace_dist']:.1e}" if "sklearn_s" in row else "n/a",
                ])
                print(f"# {time.time() - t_start:.0f}s: n={n} d={d} c={c} lelp={t_l:.3f}s"
                      + (f" sklearn={row['sklearn_s']:.3f}s" if "sklearn_s" in row else ""),
                      file=sys.stderr, flush=True)
    info["load average at end (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print("## fit_projections: lelp_jax streaming fit vs scikit-learn PCA per class\n")
    print(C.machine_table(info, {"S (num_subclasses)": s, "lelp batch size": a.batch_size,
                                 "sklearn PCA svd_solver": f"{a.solver} (resolved to: "
                                 f"{', '.join(sorted({r['solver'] for r in results if 'solver' in r})) or 'n/a'})", "sklearn capped at N <=": f"{a.max_sklearn_n:,}",
                                 "BLAS threads": a.blas_threads or "default",
                                 "lelp batches": "generated on the device" if a.data_on_device
                                 else "from the host (copies timed)",
                                 "total wall time": f"{time.time() - t_start:.0f} s"}))
    print()
    print(C.markdown_table(
        ["N", "D", "C", "repeats", "lelp s", "sklearn s", "speed-up (sklearn/lelp)", "lelp peak MB",
         "lelp device peak MB", "sklearn peak MB", "data MB (N*D*4)", "eigval rel diff / subspace dist"], rows))
    print()
    print(targets_summary(results), flush=True)
    C.write_json(a.json, {"machine": info, "results": results})
    return 0


def targets_summary(results: list[dict[str, Any]]) -> str:
    lines = ["Targets:"]
    hit = [r for r in results if r["n"] == 37_000 and r["d"] == 384 and "speedup" in r]
    if hit:
        sp = ", ".join(f"C={r['c']}: {r['speedup']:.2f}x" for r in hit)
        ok = all(r["speedup"] >= 2 for r in hit)
        lines.append(f"- >= 2x faster than sklearn at N=37k, D=384: {'MET' if ok else 'NOT MET'} ({sp})")
    big = [r for r in results if r["n"] == 1_600_000]
    for r in big:
        if r["d"] == 768:
            lines.append(f"- fit at N=1.6M, D=768, C={r['c']} in < 1 s: {'MET' if r['lelp_s'] < 1 else 'NOT MET'} "
                         f"({r['lelp_s']:.3f} s)")
    if big:
        worst = max(r["lelp_peak_mb"] for r in big)
        lines.append(f"- lelp peak memory < 200 MB at N=1.6M: {'MET' if worst < 200 else 'NOT MET'} "
                     f"(worst {worst:.0f} MB)")
    by_dc: dict[tuple, list] = {}
    for r in results:
        by_dc.setdefault((r["d"], r["c"]), []).append(r)
    flat = [f"D={d},C={c}: " + " -> ".join(f"{r['lelp_peak_mb']:.0f}" for r in sorted(rs, key=lambda r: r["n"]))
            for (d, c), rs in sorted(by_dc.items())]
    lines.append("- lelp peak MB over increasing N (flat in N?): " + "; ".join(flat))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
