"""One student run of the main job (configs/digits_binary.py, method ce) through lelp's loop
against a minimal hand-written JAX loop of the same model, data, optimizer and evaluation cadence.

The minimal loop is the anchor (#22): the split on the device, each epoch's
``default_rng([seed, epoch])`` order sent once as indices, one jitted step per batch (the gather
inside it), the validation split evaluated in one jitted call every ``train.eval_every`` steps and
the best-val parameters kept; no checkpoints, no metrics files. lelp's loop does all it always does
(Orbax checkpoints at ``train.checkpoint_every``, metrics.jsonl, TensorBoard, result.json).

Compile and set-up time is shown apart: after one untimed warm-up run of each loop (the process's
first jit calls), each loop is timed at N and 2N steps (fresh workdirs),
``per N steps = T(2N) - T(N)`` and ``set-up + compile = T(N) - per N steps``. The ratio is that of the
per-N-steps medians measured side by side (interleaved), target <= 1.5x.
"""
from __future__ import annotations

import functools
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import base_parser, check_repeats, fmt, machine_info, machine_table, markdown_table, median, \
    write_json  # noqa: E402

TARGET = 1.5


def _config(steps: int, eval_every: int, steps_per_call: int):
    from lelp_jax.config import load_config

    overrides = [f"--config.train.num_steps={steps}", f"--config.train.eval_every={eval_every}",
                 f"--config.train.steps_per_call={steps_per_call}"]
    return load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                    "digits_binary.py"), overrides)


def _student(config, num_classes):
    from lelp_jax.models import build_model
    from lelp_jax.pipeline.context import model_kwargs

    return build_model(config.student.model, num_outputs=num_classes, **model_kwargs(config.student))


def lelp_run(config, sources, num_classes) -> dict:
    """``train_and_evaluate`` exactly as ``lelp distill`` calls it for ce (fresh workdir)."""
    import time

    from lelp_jax import methods, train
    from lelp_jax.runtime import sharding

    with tempfile.TemporaryDirectory() as wd:
        t0 = time.perf_counter()
        rec = train.train_and_evaluate(**sources, model=_student(config, num_classes),
                                       method=methods.get_method("ce"), cfg=config, mesh=sharding.make_mesh(),
                                       workdir=wd, seed=0, num_classes=num_classes, progress=False)
        return {"seconds": time.perf_counter() - t0, "test_accuracy": rec["test_accuracy_best_val"]}


def _arrays(source):
    import numpy as np

    from lelp_jax.data.iterator import stack_records
    from lelp_jax.data.sources import read_records

    rows = stack_records(read_records(source, np.arange(len(source))))
    key = "features" if "features" in rows else "image"
    return key, rows[key], rows["label"]


def minimal_run(config, sources, num_classes) -> dict:
    """The hand-written loop (see the module doc): same model, optimizer, batches and eval cadence."""
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from lelp_jax.train import make_optimizer

    t0 = time.perf_counter()
    c = config.train
    steps, bs, every, seed = int(c.num_steps), int(c.batch_size), int(c.eval_every), 0
    model = _student(config, num_classes)
    key, x_tr, y_tr = _arrays(sources["train_source"])
    _, x_va, y_va = _arrays(sources["val_source"])
    _, x_te, y_te = _arrays(sources["test_source"])
    x_tr, y_tr, x_va, y_va, x_te, y_te = (jnp.asarray(a) for a in (x_tr, y_tr, x_va, y_va, x_te, y_te))
    n = int(x_tr.shape[0])
    per_epoch = n // bs
    params = model.init(jax.random.PRNGKey(seed), {key: x_tr[:1]}, train=False)["params"]
    opt = make_optimizer(c, num_steps=steps)
    opt_state = opt.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, epoch_idx, b):
        idx = epoch_idx[b]

        def loss_fn(p):
            _, logits = model.apply({"params": p}, {key: x_tr[idx]}, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y_tr[idx]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def accuracy(params, x, y):
        _, logits = model.apply({"params": params}, {key: x}, train=False)
        return jnp.mean(jnp.argmax(logits, -1) == y)

    best, best_val, losses = params, -1.0, []
    epoch_idx = None
    for k in range(steps):
        epoch, b = divmod(k, per_epoch)
        if b == 0:
            order = np.random.default_rng([seed, epoch]).permutation(n)
            epoch_idx = jnp.asarray(order[:per_epoch * bs].reshape(per_epoch, bs).astype(np.int32))
        params, opt_state, loss = step(params, opt_state, epoch_idx, b)
        losses.append(loss)
        if (k + 1) % every == 0 or k + 1 == steps:
            jax.device_get(losses)
            losses.clear()
            val = float(accuracy(params, x_va, y_va))
            if val > best_val:
                best_val, best = val, jax.tree_util.tree_map(jnp.copy, params)
    test = float(accuracy(best, x_te, y_te))
    return {"seconds": time.perf_counter() - t0, "test_accuracy": test}


def main(argv=None) -> int:
    p = base_parser(__doc__.splitlines()[0], default_repeats=3)
    p.add_argument("--steps", type=int, default=1500, help="N (the main job's 1,500 student steps)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--steps-per-call", type=int, default=50, help="the lelp variant with train.steps_per_call")
    args = p.parse_args(argv)
    repeats = check_repeats(args.repeats)
    if args.smoke:
        args.steps, args.eval_every, args.steps_per_call = 20, 10, 5
    info = machine_info()
    print(machine_table(info))

    from lelp_jax.pipeline.context import Run

    with tempfile.TemporaryDirectory() as wd:
        run = Run(_config(args.steps, args.eval_every, 1), wd)
        sources, num_classes = run.sources(), run.info.num_classes
    loops = {"minimal JAX loop": lambda cfg: minimal_run(cfg, sources, num_classes),
             "lelp": lambda cfg: lelp_run(cfg, sources, num_classes),
             f"lelp, train.steps_per_call={args.steps_per_call}": lambda cfg: lelp_run(cfg, sources, num_classes)}
    spc = {name: (args.steps_per_call if "steps_per_call" in name else 1) for name in loops}
    raw: dict[str, dict[str, list[float]]] = {name: {"N": [], "2N": [], "acc": []} for name in loops}
    for name, fn in loops.items():  # warm-up, not timed: the process's first jit calls, imports, data reads
        fn(_config(args.steps, args.eval_every, spc[name]))
    for _ in range(repeats):
        for name, fn in loops.items():  # interleaved: the machine's load moves every loop alike
            for label, steps in (("N", args.steps), ("2N", 2 * args.steps)):
                out = fn(_config(steps, args.eval_every, spc[name]))
                raw[name][label].append(out["seconds"])
                if label == "N":
                    raw[name]["acc"].append(out["test_accuracy"])
    anchor = median([b - a for a, b in zip(raw["minimal JAX loop"]["N"], raw["minimal JAX loop"]["2N"])])
    rows, results = [], {}
    for name, r in raw.items():
        per_n = median([b - a for a, b in zip(r["N"], r["2N"])])
        setup = median(r["N"]) - per_n
        ratio = per_n / anchor if anchor > 0 else float("nan")
        results[name] = {"per_n_steps_s": per_n, "setup_compile_s": setup, "ratio": ratio, **r}
        rows.append([name, fmt(median(r["N"])), fmt(setup), fmt(per_n), fmt(1e3 * per_n / args.steps),
                     f"{ratio:.2f}x", f"{100 * median(r['acc']):.1f}"])
    print()
    print(f"One ce student run of configs/digits_binary.py, N = {args.steps} steps, eval every {args.eval_every}; "
          f"medians of {repeats} interleaved repeats; per N steps = T(2N) - T(N).")
    print(markdown_table(["loop", "T(N) s", "set-up + compile s", "per N steps s", "ms / step",
                          "/ minimal loop", "test acc % (best val)"], rows))
    verdict = "MET" if results["lelp"]["ratio"] <= TARGET else "NOT MET"
    print(f"\ntarget lelp <= {TARGET}x the minimal loop: {verdict} ({results['lelp']['ratio']:.2f}x)")
    write_json(args.json, {"machine": info, "steps": args.steps, "eval_every": args.eval_every,
                           "results": results, "target": TARGET, "verdict": verdict})
    return 0


if __name__ == "__main__":
    sys.exit(main())
