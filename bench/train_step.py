"""Train-step throughput of ce, kd and lelp (S = 2, 4, 8, 16) through ``lelp_jax.train.make_train_step``.

    python bench/train_step.py [--smoke] [--repeats K] [--steps N] [--batch-size B]

Students (C = 2 classes; head C for ce/kd, C*S for lelp):
- text: ``text_transformer`` (d_model 64, 2 layers, 4 heads; about 2.1M parameters;
  or ``--text-student embedding_bag``, embed 64) over WordPiece ids (B, L = --seq-len),
  teacher embedding width 384 (MiniLM's);
- vision: ``small_cnn`` conv (8, 16) + dense 32 (the paper-regime student) on
  32x32x3 images (or ``--vision-student mlp``, one hidden layer of 32), teacher
  embedding width 64 (CIFAR ResNet-56's).
--smoke runs only the mlp student (kd and lelp S=2; --students text adds embedding_bag):
they compile in a fraction of the time.
Teacher outputs are cached in the batch (``teacher_embedding``, ``teacher_logits``),
so one step = student forward + method targets (LELP: projections of the teacher
embedding, softmaxes) + loss + backward + Adam update: exactly what the
library's one compiled step runs in cached mode. The projections come from
``fit_projections`` on moments of random embeddings (``update_moments``).

--compute-dtype bfloat16 runs the forward passes in bfloat16 (float32 master weights), as
``train.compute_dtype`` does on accelerators.
Each variant's step is compiled and warmed up (3 steps); then every repeat runs
--steps steps of each variant in turn (interleaved, so machine load drifts hit all
alike) and blocks until the final state is ready. Reported: median examples/s over
repeats and the lelp/kd step-time ratio (target <= 1.05) three ways: the median
over repeats of each repeat's ratio (paired, so slow load drifts cancel), the ratio
of the best (fastest) repeats (other processes only add time), and the ratio of the
compiled steps' FLOPs from XLA's cost analysis (load-independent: the intrinsic
extra work of the LELP targets and the wider head).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NUM_CLASSES = 2


def method_cfg(num_subclasses: int):
    """``base_config()`` with the benchmark's method and optimizer settings (the methods read a complete config)."""
    from lelp_jax.config import base_config

    c = base_config()
    c.update({"kd": {"tau": 2.0, "alpha": 0.0},
              "lelp": {"num_subclasses": num_subclasses, "beta": 1.0, "tau": 1.0, "standardize": False},
              "train": {"optimizer": "adam", "learning_rate": 1e-3, "schedule": "constant"}})
    return c


def make_batch(kind: str, *, batch_size: int, seq_len: int, image_size: int, teacher_dim: int, seed: int):
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    batch = {"label": rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32),
             "mask": np.ones(batch_size, np.float32),
             "teacher_embedding": rng.standard_normal((batch_size, teacher_dim)).astype(np.float32),
             "teacher_logits": rng.standard_normal((batch_size, NUM_CLASSES)).astype(np.float32)}
    if kind == "text":
        batch["input_ids"] = rng.integers(1000, 30000, (batch_size, seq_len)).astype(np.int32)
        batch["attention_mask"] = np.ones((batch_size, seq_len), np.int32)
    else:
        batch["image"] = rng.random((batch_size, image_size, image_size, 3), dtype=np.float32)
    return {k: jnp.asarray(v) for k, v in batch.items()}


def make_projections(teacher_dim: int, num_subclasses: int, seed: int):
    """LELP projections fitted (library functions) on random teacher embeddings."""
    import jax

    from lelp_jax.core.projections import fit_projections
    from lelp_jax.core.statistics import init_moments, update_moments

    rng = np.random.default_rng(seed)
    n = max(4 * teacher_dim, 256)
    h = rng.standard_normal((n, teacher_dim)).astype(np.float32)
    y = np.arange(n, dtype=np.int32) % NUM_CLASSES
    moments = jax.jit(update_moments)(init_moments(NUM_CLASSES, teacher_dim), h, y)
    w = rng.standard_normal((NUM_CLASSES, teacher_dim)).astype(np.float32)
    return fit_projections(moments, classifier_weights=w, num_subclasses=num_subclasses, key=seed)


def build_variant(kind: str, method_name: str, s: int, batch, teacher_dim: int, a):
    """(compiled step, state, aux, XLA FLOPs per step) for one (student, method, S)."""
    from lelp_jax.methods import get_method
    from lelp_jax.models import build_model
    from lelp_jax.train import init_train_state, make_optimizer, make_train_step

    cfg = method_cfg(s)
    method = get_method(method_name)
    heads = method.student_outputs(NUM_CLASSES, cfg)
    if kind == "text" and a.text_student == "text_transformer":
        model = build_model("text_transformer", num_outputs=heads, d_model=64, num_layers=2, num_heads=4,
                            max_len=max(a.seq_len, 16))
    elif kind == "text":
        model = build_model("embedding_bag", num_outputs=heads, embed_dim=64)
    elif a.vision_student == "small_cnn":
        model = build_model("small_cnn", num_outputs=heads, conv_features=(8, 16), hidden=(32,))
    else:
        model = build_model("mlp", num_outputs=heads, hidden=(32,))
    optimizer = make_optimizer(cfg["train"], num_steps=1000)
    sample = {k: np.asarray(v[:1]) for k, v in batch.items()}
    state = C.jit_init(lambda: init_train_state(model=model, method=method, optimizer=optimizer, sample_batch=sample,
                                                seed=0, method_cfg=cfg, teacher_embedding_dim=teacher_dim))
    step = make_train_step(model=model, method=method, optimizer=optimizer, num_classes=NUM_CLASSES,
                           method_cfg=cfg, compute_dtype=a.compute_dtype)
    aux = make_projections(teacher_dim, s, seed=1) if method.needs_projections else None
    compiled = step.lower(state, batch, None, aux).compile()  # compile once: run and cost-analyse the same program
    cost = compiled.cost_analysis()
    cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
    return compiled, state, aux, float(cost.get("flops", float("nan")))


def main(argv=None) -> int:
    p = C.base_parser(__doc__.splitlines()[0], default_repeats=7)
    p.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=64, help="text tokens per example")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--subclasses", type=int, nargs="*", default=[2, 4, 8, 16], help="S values for lelp")
    p.add_argument("--text-student", default="text_transformer", choices=["text_transformer", "embedding_bag"])
    p.add_argument("--vision-student", default="small_cnn", choices=["small_cnn", "mlp"])
    p.add_argument("--students", nargs="*", default=["text", "vision"], choices=["text", "vision"])
    p.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="the step's forward dtype (train.compute_dtype; bfloat16 on accelerators)")
    a = p.parse_args(argv)
    C.check_repeats(a.repeats)
    if a.smoke:
        a.steps, a.batch_size, a.seq_len, a.image_size, a.subclasses = 2, 16, 16, 16, [2]
        # Students that compile in a fraction of the time (XLA's CPU conv/attention compiles take seconds).
        a.text_student, a.vision_student = "embedding_bag", "mlp"
        a.students = [k for k in a.students if k == "vision"] or a.students  # one student: keeps the test short
    import jax

    info = C.machine_info()
    t_start = time.time()
    rows, raw = [], {}
    for kind in a.students:
        teacher_dim = 384 if kind == "text" else 64
        batch = make_batch(kind, batch_size=a.batch_size, seq_len=a.seq_len, image_size=a.image_size,
                           teacher_dim=teacher_dim, seed=0)
        variants = ([] if a.smoke else [("ce", 1)]) + [("kd", 1)] + [("lelp", s) for s in a.subclasses]
        built = {}
        for name, s in variants:
            t0 = time.perf_counter()
            step, state, aux, flops = build_variant(kind, name, s, batch, teacher_dim, a)
            for _ in range(3):  # warm-up
                state, metrics = step(state, batch, None, aux)
            jax.block_until_ready((state, metrics))
            built[(name, s)] = [step, state, aux, time.perf_counter() - t0, flops]
        times: dict[tuple, list[float]] = {v: [] for v in variants}
        for _ in range(a.repeats):
            for v in variants:
                step, state, aux = built[v][:3]
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    state, metrics = step(state, batch, None, aux)
                jax.block_until_ready((state, metrics))
                times[v].append((time.perf_counter() - t0) / a.steps)
                built[v][1] = state
        kd_times, kd_flops = times[("kd", 1)], built[("kd", 1)][4]
        for v in variants:
            name, s = v
            t = C.median(times[v])
            label = f"lelp S={s}" if name == "lelp" else name
            # Paired: each repeat's step time over the kd step time of the same repeat, then the median.
            ratio = "1 (ref)" if name == "kd" else f"{C.median([x / k for x, k in zip(times[v], kd_times)]):.3f}"
            best = "1 (ref)" if name == "kd" else f"{min(times[v]) / min(kd_times):.3f}"
            flops = built[v][4]
            student = a.text_student if kind == "text" else a.vision_student
            rows.append([student, label, C.fmt(a.batch_size / t), C.fmt(t * 1e3), ratio, best, C.fmt(flops / 1e9),
                         "1 (ref)" if name == "kd" else f"{flops / kd_flops:.4f}", f"{built[v][3]:.1f}"])
            raw[f"{student}/{label}"] = times[v]
    info["load average at end (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print("## train_step: examples/s of the compiled train step (cached teacher outputs)\n")
    print(C.machine_table(info, {"batch size": a.batch_size, "text seq len": a.seq_len,
                                 "image": f"{a.image_size}x{a.image_size}x3", "compute dtype": a.compute_dtype,
                                 "steps per repeat": a.steps,
                                 "repeats": a.repeats, "total wall time": f"{time.time() - t_start:.0f} s"}))
    print()
    print(C.markdown_table(["student", "method", "examples/s (median)", "step ms (median)",
                            "step time / kd (paired median)", "step time / kd (best repeats)", "GFLOP/step (XLA)",
                            "FLOPs / kd", "build+compile+3 steps s"], rows))
    print()
    for col, what in ((4, "paired median"), (5, "best repeats"), (7, "XLA FLOPs")):
        lelp = [(r[0], r[1], float(r[col])) for r in rows if r[1].startswith("lelp")]
        worst = max(lelp, key=lambda x: x[2])
        print(f"- Target lelp/kd step time <= 1.05 by {what}: {'MET' if worst[2] <= 1.05 else 'NOT MET'} "
              f"(worst {worst[2]:.3f} at {worst[0]} {worst[1]})", flush=True)
    C.write_json(a.json, {"machine": info, "step_seconds": raw})
    return 0


if __name__ == "__main__":
    sys.exit(main())
