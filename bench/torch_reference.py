"""PyTorch reference of the same KD student train step: lelp_jax (make_train_step) vs torch (CPU or CUDA).

    python bench/torch_reference.py [--smoke] [--repeats K] [--steps N] [--batch-size B]

Needs torch (optional: ``pip install 'lelp_jax[bench]'`` or ``pip install torch``); without
it the script says so and exits 0.

Same step on both sides: student forward, Hinton KD loss against cached teacher
logits (tau = 2, tau^2-scaled soft cross-entropy, alpha = 0), backward, Adam
(lr 1e-3, betas (0.9, 0.999), eps 1e-8), float32, one batch resident in memory.
Students, C = 2:
- ``small_cnn`` conv (8, 16) + dense 32 (the paper-regime student) on 32x32x3 images
  (torch: Conv2d 3x3 pad 1 + ReLU + MaxPool 2, twice; flattened in NHWC order like Flax);
- ``mlp`` 3072 -> 256 -> 2 on the flattened images.
torch starts from the Flax initial weights (transposed), so the two sides compute the
same function: the table reports the KD loss of both at the last warm-up step
(agreement = same architecture, loss and optimizer). torch is timed with 1 thread
and with all cores (``torch.set_num_threads``; its OpenMP threads spin and collapse
when other processes share the cores) and compared at its faster setting; JAX uses
its default (all cores). The two
sides run interleaved, --steps steps per timing, median over --repeats; the ratio
is lelp_jax step time / torch step time, the median of the per-repeat (paired)
ratios (target <= 1: no slower).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

TAU = 2.0
NUM_CLASSES = 2
WARMUP = 3


def jax_side(kind: str, batch_np: dict, teacher_dim: int):
    """(step closure, initial params as NumPy, losses list) for the lelp_jax student."""
    import jax
    import jax.numpy as jnp

    from lelp_jax.config import base_config
    from lelp_jax.methods import get_method
    from lelp_jax.models import build_model
    from lelp_jax.train import init_train_state, make_optimizer, make_train_step

    cfg = base_config()
    cfg.update({"kd": {"tau": TAU, "alpha": 0.0}, "train": {"optimizer": "adam", "learning_rate": 1e-3,
                                                            "schedule": "constant"}})
    if kind == "small_cnn":
        model = build_model("small_cnn", num_outputs=NUM_CLASSES, conv_features=(8, 16), hidden=(32,))
    else:
        model = build_model("mlp", num_outputs=NUM_CLASSES, hidden=(256,))
    method = get_method("kd")
    optimizer = make_optimizer(cfg["train"], num_steps=10_000)
    sample = {k: v[:1] for k, v in batch_np.items()}
    state = C.jit_init(lambda: init_train_state(model=model, method=method, optimizer=optimizer, sample_batch=sample,
                                                seed=0, method_cfg=cfg, teacher_embedding_dim=teacher_dim))
    params0 = jax.tree_util.tree_map(np.asarray, state.params)
    step = make_train_step(model=model, method=method, optimizer=optimizer, num_classes=NUM_CLASSES,
                           method_cfg=cfg)
    batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
    box = {"state": state, "loss": None}

    def run(n: int) -> None:
        s = box["state"]
        for _ in range(n):
            s, metrics = step(s, batch, None, None)
        jax.block_until_ready((s, metrics))
        box["state"], box["loss"] = s, float(metrics["loss"])

    return run, params0, box


def torch_side(kind: str, batch_np: dict, params0: dict, device: str = "cpu"):
    import torch
    from torch import nn

    class NHWCFlatten(nn.Module):
        def forward(self, x):  # Flax flattens (H, W, C); keep the same order for identical weights
            return x.permute(0, 2, 3, 1).flatten(1)

    def dense(p, n_in):
        layer = nn.Linear(n_in, p["kernel"].shape[1])
        layer.weight.data = torch.from_numpy(np.array(p["kernel"].T))
        layer.bias.data = torch.from_numpy(np.array(p["bias"]))
        return layer

    def conv(p):
        k = p["kernel"]  # (kh, kw, in, out) -> (out, in, kh, kw)
        layer = nn.Conv2d(k.shape[2], k.shape[3], 3, padding=1)
        layer.weight.data = torch.from_numpy(np.array(k.transpose(3, 2, 0, 1)))
        layer.bias.data = torch.from_numpy(np.array(p["bias"]))
        return layer

    images = batch_np["image"]
    if kind == "small_cnn":
        side = images.shape[1] // 4
        model = nn.Sequential(
            conv(params0["conv_0"]), nn.ReLU(), nn.MaxPool2d(2),
            conv(params0["conv_1"]), nn.ReLU(), nn.MaxPool2d(2),
            NHWCFlatten(), dense(params0["dense_0"], 16 * side * side), nn.ReLU(),
            dense(params0["head"], 32))
    else:
        model = nn.Sequential(NHWCFlatten(), dense(params0["dense_0"], int(np.prod(images.shape[1:]))), nn.ReLU(),
                              dense(params0["head"], 256))
    model = model.to(device)
    x = torch.from_numpy(np.array(images.transpose(0, 3, 1, 2))).to(device)  # NCHW, torch's default layout
    teacher_probs = torch.softmax(torch.from_numpy(batch_np["teacher_logits"]).to(device) / TAU, dim=-1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    box = {"loss": None}

    def run(n: int) -> None:
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss = -(teacher_probs * torch.log_softmax(logits / TAU, dim=-1)).sum(-1).mean() * TAU ** 2
            loss.backward()
            opt.step()
        box["loss"] = float(loss.detach())  # waits for the device

    return run, box


def main(argv=None) -> int:
    p = C.base_parser(__doc__.splitlines()[0], default_repeats=5)
    p.add_argument("--steps", type=int, default=20, help="steps per timing")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--students", nargs="*", default=["small_cnn", "mlp"], choices=["small_cnn", "mlp"])
    p.add_argument("--torch-threads", type=int, nargs="*", default=None,
                   help="torch intra-op thread counts to time (default: 1 and all cores)")
    p.add_argument("--torch-device", default="cpu", choices=["cpu", "cuda"],
                   help="where torch runs; lelp_jax runs on JAX's default device. With cuda, TF32 matmuls are "
                        "allowed in torch, as XLA uses them for float32 on GPUs by default")
    a = p.parse_args(argv)
    C.check_repeats(a.repeats)
    try:
        import torch
    except ImportError:
        print("torch is not installed: this reference is optional. Install it with\n"
              "    pip install 'lelp_jax[bench]'   (or: pip install torch)\n"
              "and run this script again.")
        return 0
    if a.smoke:
        a.steps, a.batch_size, a.image_size = 2, 16, 16
        a.students = ["mlp"]  # XLA's CPU compile of the conv net alone takes longer than the smoke budget
    threads = sorted(set(a.torch_threads or [1, os.cpu_count() or 1]))
    if a.torch_device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("torch_reference: --torch-device cuda but torch sees no CUDA device.")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        threads = sorted(set(a.torch_threads or [torch.get_num_threads()]))  # host threads matter little there
    info = C.machine_info()
    info["torch"] = f"{torch.__version__} (threads tried: {threads}; the faster is compared)"
    info["torch device"] = (f"cuda: {torch.cuda.get_device_name(0)} (TF32 allowed)" if a.torch_device == "cuda"
                            else "cpu")
    t_start = time.time()
    rng = np.random.default_rng(0)
    teacher_dim = 64
    rows, raw = [], {}
    for kind in a.students:
        batch = {"image": rng.random((a.batch_size, a.image_size, a.image_size, 3), dtype=np.float32),
                 "label": rng.integers(0, NUM_CLASSES, a.batch_size).astype(np.int32),
                 "mask": np.ones(a.batch_size, np.float32),
                 "teacher_embedding": rng.standard_normal((a.batch_size, teacher_dim)).astype(np.float32),
                 "teacher_logits": (2 * rng.standard_normal((a.batch_size, NUM_CLASSES))).astype(np.float32)}
        jrun, params0, jbox = jax_side(kind, batch, teacher_dim)
        truns = {th: torch_side(kind, batch, params0, a.torch_device) for th in threads}
        jrun(WARMUP)  # compile + warm-up
        for th, (trun, _) in truns.items():
            torch.set_num_threads(th)
            trun(WARMUP)
        losses = (jbox["loss"], truns[threads[0]][1]["loss"])
        jt, tt = [], {th: [] for th in threads}
        for _ in range(a.repeats):
            jt.append(C.time_call(lambda: jrun(a.steps)) / a.steps)
            for th, (trun, _) in truns.items():
                torch.set_num_threads(th)
                tt[th].append(C.time_call(lambda: trun(a.steps)) / a.steps)
        best = min(threads, key=lambda th: C.median(tt[th]))
        j, t = C.median(jt), C.median(tt[best])
        rows.append([kind, C.fmt(j * 1e3)] + [C.fmt(C.median(tt[th]) * 1e3) for th in threads]
                    + [C.fmt(a.batch_size / j), C.fmt(a.batch_size / t),
                       f"{C.median([x / y for x, y in zip(jt, tt[best])]):.2f}", f"{losses[0]:.6f} / {losses[1]:.6f}"])
        raw[kind] = {"jax_step_s": jt, "torch_step_s": {str(th): v for th, v in tt.items()},
                     "torch_best_threads": best, "loss_after_warmup": losses}
    info["load average at end (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"## torch_reference: the same KD train step in lelp_jax and PyTorch ({a.torch_device})\n")
    print(C.machine_table(info, {"batch size": a.batch_size, "image": f"{a.image_size}x{a.image_size}x3",
                                 "steps per timing": a.steps, "repeats": a.repeats,
                                 "total wall time": f"{time.time() - t_start:.0f} s"}))
    print()
    print(C.markdown_table(["student", "lelp_jax ms/step"] + [f"torch ms/step ({th} thr)" for th in threads]
                           + ["lelp_jax ex/s", "torch ex/s (best)", "ratio lelp_jax/torch (best)",
                              f"KD loss at step {WARMUP}: jax / torch"], rows))
    print()
    worst = max(float(r[-2]) for r in rows)
    print(f"Target lelp_jax no slower than torch (ratio <= 1): {'MET' if worst <= 1 else 'NOT MET'} "
          f"(worst ratio {worst:.2f})", flush=True)
    C.write_json(a.json, {"machine": info, "runs": raw})
    return 0


if __name__ == "__main__":
    sys.exit(main())
