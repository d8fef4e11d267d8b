"""`lelp export`: one finished student run of a workdir written as a self-contained bundle.

The run is chosen on validation, never on test: by default the finished run with the highest
``best_val_accuracy`` (ties: the earlier method of ``config.methods``, then the lower seed), or the
best of ``--method`` / the given ``--seed``. Its best-validation variables (the ones its recorded
``test_accuracy_best_val`` was measured with) go into the bundle (:mod:`lelp_jax.student.bundle`)
with ``predict.jax_export`` and a model card (``card.md`` + ``card.json``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np
from flax import serialization
from jax.sharding import Mesh

import lelp_jax
from lelp_jax import train
from lelp_jax.core import atomic
from lelp_jax.models import build_model, count_params
from lelp_jax.pipeline.workdir import Workdir, read_json
from lelp_jax.protocol.paired import paired_difference, per_seed
from lelp_jax.runtime.errors import ConfigError
from lelp_jax.student.bundle import (EXPORTED, FORMAT_VERSION, STUDENT_JSON, TOKENIZER, VARIABLES, load_student,
                                     make_apply, model_kwargs)

__all__ = ["NotExportable", "choose_run", "export_student", "export_exported", "model_card", "EXPORT_PLATFORMS",
           "export_and_log", "protocol_choice", "usage_line", "main"]

class NotExportable(ConfigError):
    """A finished run the bundle cannot hold (yet): `lelp export` stops on it, `lelp run` says so in one line."""


# Platforms predict.jax_export is lowered for, where the installed jaxlib can (cpu always).
EXPORT_PLATFORMS = ("cpu", "cuda", "tpu")


def _finished(wd: Workdir) -> list[dict]:
    runs = [read_json(p) for p in wd.runs()]
    if not runs:
        raise ConfigError(f"{str(wd.root)!r} holds no finished student run (runs/METHOD/seed_K/result.json); run "
                          "`lelp run` (or `lelp distill`) there first.")
    return runs


def choose_run(workdir: str | Path, *, method: str | None = None, seed: int | None = None,
               seeds: Sequence[int] | None = None) -> dict:
    """The result.json of the run to export: the highest ``best_val_accuracy`` among the finished runs
    (of ``method``, of ``seed`` or one of ``seeds`` when given); ties go to the earlier method of the
    workdir's config, then the lower seed."""
    wd = Workdir(workdir)
    runs = _finished(wd)
    order = list(read_json(wd.config_json).get("methods", [])) if wd.config_json.exists() else []
    allowed = None if seed is None and seeds is None else {int(s) for s in ([seed] if seed is not None else seeds)}
    pick = [r for r in runs if (method is None or r["method"] == method) and (allowed is None or int(r["seed"]) in allowed)]
    if not pick:
        have = ", ".join(f"{r['method']}/seed_{r['seed']}" for r in runs)
        raise ConfigError(f"no finished run of {method or 'any method'}" + (f" with seed in {sorted(allowed)}" if
                          allowed is not None else "") + f" in {str(wd.root)!r}; finished: {have}. Pick one of those.")

    def key(r):
        rank = order.index(r["method"]) if r["method"] in order else len(order)
        return (-float(r["best_val_accuracy"]), rank, r["method"], int(r["seed"]))

    return sorted(pick, key=key)[0]


def export_exported(apply, variables, spec: Mapping[str, Any]) -> tuple[bytes, list[str], list[list]]:
    """``predict.jax_export`` bytes of ``inputs -> apply(variables, inputs)`` (the variables baked in), its
    platforms and input shapes ('b' the symbolic batch; text: 'l' the symbolic length, else max_length)."""
    keys = list(spec["input"]["keys"])
    kind = spec["input"]["kind"]
    consts = jax.tree_util.tree_map(np.asarray, variables)

    def fn(*inputs):
        return apply(consts, dict(zip(keys, inputs)))

    def attempt(dims: str, platforms: Sequence[str]):
        shapes = jax.export.symbolic_shape(dims)
        if kind == "text":
            args = [jax.ShapeDtypeStruct(shapes, np.int32) for _ in keys]
        else:
            args = [jax.ShapeDtypeStruct(shapes, np.float32)]
        return jax.export.export(jax.jit(fn), platforms=tuple(platforms))(*args)

    if kind == "text":
        dims_options = ["b, l", f"b, {int(spec['input']['max_length'])}"]
    else:
        dims_options = [", ".join(["b"] + [str(int(s)) for s in spec["input"]["shape"]])]
    last = None
    for dims in dims_options:
        for platforms in (EXPORT_PLATFORMS, ("cpu",)):
            try:
                exp = attempt(dims, platforms)
            except Exception as e:  # noqa: BLE001 - a platform or a symbolic length this jaxlib cannot lower
                last = e
                continue
            return bytes(exp.serialize()), list(exp.platforms), [[d.strip() for d in dims.split(",")]] * len(keys)
    raise ConfigError(f"jax.export could not lower the student ({type(last).__name__}: {last}).")


def _card_pairs(wd: Workdir, chosen: Mapping[str, Any]) -> dict[str, Any]:
    """The chosen method's paired test difference to ``kd`` and ``ce`` over the seeds they share (95 % t interval)."""
    acc = per_seed([read_json(p) for p in wd.runs()])
    out = {}
    for ref in ("kd", "ce"):
        if ref == chosen["method"] or ref not in acc or chosen["method"] not in acc:
            continue
        d = paired_difference(acc[chosen["method"]], acc[ref])
        if d is not None:
            out[ref] = {"mean": d.mean, "low": d.low, "high": d.high, "seeds": list(d.seeds), "verdict": d.verdict}
    return out


def model_card(wd: Workdir, chosen: Mapping[str, Any], record: Mapping[str, Any], params: int) -> dict[str, Any]:
    """card.json: data and its size, the teacher (identity, test accuracy), the method and settings, the
    student's validation and test accuracy, its params, the paired differences to kd and ce."""
    config = read_json(wd.config_json) if wd.config_json.exists() else {}
    teacher = read_json(wd.teacher_json) if wd.teacher_json.exists() else {}
    data = config.get("data", {})
    return {"dataset": chosen.get("dataset", data.get("name")), "config_name": chosen.get("config_name"),
            "data": {k: data.get(k) for k in ("name", "files", "max_examples_per_split", "num_folds", "fold")
                     if data.get(k) not in (None, {}, "")},
            "examples": record.get("examples"), "class_names": record["class_names"],
            "teacher": {"model": teacher.get("model"), "identity": teacher.get("identity"),
                        "test_accuracy": teacher.get("test_accuracy"), "params": teacher.get("params")},
            "method": chosen["method"], "seed": int(chosen["seed"]), "settings": record["settings"],
            "overrides": chosen.get("overrides", {}), "student_model": record["model"],
            "validation_accuracy": chosen["best_val_accuracy"], "test_accuracy": chosen["test_accuracy_best_val"],
            "params": params, "paired_test_difference": _card_pairs(wd, chosen)}


def _card_md(card: Mapping[str, Any]) -> str:
    pct = lambda v: "n/a" if v is None else f"{100 * float(v):.2f} %"  # noqa: E731
    lines = [f"# Student: {card['method']} / seed {card['seed']} on {card['dataset']}", "",
             f"- classes: {', '.join(card['class_names'])}",
             f"- data: {json.dumps(card['data'])}; examples {json.dumps(card['examples'])}",
             f"- teacher: {card['teacher']['model']} ({card['teacher']['identity']}), test accuracy "
             f"{pct(card['teacher']['test_accuracy'])}, params {card['teacher']['params']}",
             f"- method: {card['method']}, settings {json.dumps(card['settings'])}",
             f"- student: {card['student_model']['name']} {json.dumps(card['student_model']['kwargs'])}, "
             f"params {card['params']}",
             f"- validation accuracy {pct(card['validation_accuracy'])} (the run was chosen on it); "
             f"test accuracy {pct(card['test_accuracy'])}"]
    for ref, d in card["paired_test_difference"].items():
        lines.append(f"- paired test difference to {ref} over seeds {d['seeds']}: {100 * d['mean']:+.2f} "
                     f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] points (95 % t interval; {d['verdict']})")
    lines += ["", "Use: `lelp predict --student DIR --input FILE` or `lelp_jax.load_student(DIR)`."]
    return "\n".join(lines) + "\n"


def export_student(workdir: str | Path, *, method: str | None = None, seed: int | None = None,
                   seeds: Sequence[int] | None = None, out: str | Path | None = None) -> tuple[Path, dict]:
    """Write the bundle of the chosen run (:func:`choose_run`) to ``out`` (default ``WORKDIR/student``, replaced
    whole); returns ``(out, the run's result.json)``."""
    wd = Workdir(workdir)
    chosen = choose_run(workdir, method=method, seed=seed, seeds=seeds)
    name = f"{chosen['method']}/seed_{chosen['seed']}"
    record = chosen.get("student")
    if record is None:
        raise NotExportable(f"{name} in {str(wd.root)!r} was trained before runs recorded their student spec; "
                          "retrain it (`lelp run ... --force`) to export it.")
    if record["input"].get("frozen_encoder"):
        raise NotExportable(f"{name} reads a frozen encoder's embeddings (data.features="
                          f"{record['input']['frozen_encoder']!r}); exporting such a student is not supported yet: "
                          "export a student over token ids instead.")
    target = Path(out) if out is not None else wd.root / "student"
    source = _source_digest(wd, chosen)
    if _bundle_source(target) == source:  # a rerun of a finished workdir rewrites nothing
        return target, chosen
    one_device = Mesh(np.asarray(jax.local_devices()[:1]), ("data",))  # only this process reads and writes
    variables = train.load_variables(str(wd.run_dir(chosen["method"], int(chosen["seed"]))), which="best",
                                     mesh=one_device)
    host = flax.core.unfreeze(jax.tree_util.tree_map(np.asarray, dict(variables)))
    host = {k: v for k, v in host.items() if v}  # an empty batch_stats stays out
    model = build_model(record["model"]["name"], num_outputs=int(record["head_outputs"]), **model_kwargs(record))
    apply = make_apply(model, num_classes=int(record["num_classes"]), keys=tuple(record["input"]["keys"]),
                       compute_dtype=record.get("compute_dtype", "float32"))
    spec = {"format_version": FORMAT_VERSION,
            "versions": {"lelp_jax": lelp_jax.__version__, "jax": jax.__version__, "flax": flax.__version__},
            **record, "input": dict(record["input"]),
            "run": {"workdir": str(wd.root.resolve()), "method": chosen["method"], "seed": int(chosen["seed"]),
                    "best_val_accuracy": chosen["best_val_accuracy"],
                    "test_accuracy_best_val": chosen["test_accuracy_best_val"], "source_sha256": source}}
    blob, platforms, shapes = export_exported(apply, host, spec)
    spec["exported"] = {"file": EXPORTED, "platforms": platforms, "input_shapes": shapes,
                        "inputs": list(record["input"]["keys"]), "output": "(b, C) class probabilities"}
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if spec["input"]["kind"] == "text":
        shutil.copyfile(spec["input"]["tokenizer"], tmp / TOKENIZER)
        spec["input"]["tokenizer"] = TOKENIZER
    (tmp / VARIABLES).write_bytes(serialization.msgpack_serialize(host))
    (tmp / EXPORTED).write_bytes(blob)
    card = model_card(wd, chosen, record, count_params(host["params"]))
    atomic.write_json(tmp / STUDENT_JSON, spec)
    atomic.write_json(tmp / "card.json", card)
    (tmp / "card.md").write_text(_card_md(card))
    _check_bundle(tmp, host)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target, chosen


def _source_digest(wd: Workdir, chosen: Mapping[str, Any]) -> str:
    """SHA-256 of what a bundle is made from: the chosen run's result.json, the workdir's results.json (the card's
    paired differences) and the lelp_jax version; an unchanged digest means the bundle in place is current."""
    h = hashlib.sha256(lelp_jax.__version__.encode())
    for path in (wd.run_dir(chosen["method"], int(chosen["seed"])) / "result.json", wd.results):
        h.update(path.read_bytes() if path.exists() else b"")
    return h.hexdigest()


def _bundle_source(folder: Path) -> str | None:
    """The ``source_sha256`` of the bundle in ``folder`` when it is whole (every file present), else None."""
    try:
        spec = json.loads((folder / STUDENT_JSON).read_text())
    except (OSError, ValueError):
        return None
    files = [VARIABLES, EXPORTED, "card.json", "card.md"] + ([TOKENIZER] if spec["input"]["kind"] == "text" else [])
    return spec["run"].get("source_sha256") if all((folder / f).is_file() for f in files) else None


def _check_bundle(folder: Path, variables) -> None:
    """The bundle loads and restores the run's variables bit-exact (before it replaces an older bundle)."""
    student = load_student(folder)
    same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(np.asarray(a), b)), student.variables, variables)
    if not all(jax.tree_util.tree_leaves(same)):
        raise RuntimeError(f"{folder}: the restored variables differ from the run's; this is a bug.")


def export_and_log(workdir: str | Path, log: Callable[[str], None], **choice) -> Path | None:
    """The end of `lelp run` / `sweep` / `kfold`: :func:`export_student` (``choice``: method, seeds, out), then one
    line saying which run and how to use it; a student the bundle cannot hold yet is one line too (None)."""
    try:
        out, chosen = export_student(workdir, **choice)
    except NotExportable as e:
        log(f"[export] skipped: {e}")
        return None
    log(usage_line(out, chosen))
    return out


def protocol_choice(selection: Mapping[str, float]) -> str:
    """The method whose chosen settings have the best mean validation accuracy (``selection``: method ->
    that accuracy; the first listed wins a tie): what `lelp sweep` / `lelp kfold` export."""
    return max(selection, key=lambda m: float(selection[m]))


def usage_line(out: Path, chosen: Mapping[str, Any]) -> str:
    """One line: which run was exported, where, and how to use it."""
    return (f"[export] {chosen['method']}/seed_{chosen['seed']} (validation {100 * chosen['best_val_accuracy']:.1f} %) "
            f"-> {out}; lelp predict --student {out} --input FILE")


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="lelp export", description="write a finished student run as a bundle "
                                "(default: the best on validation, to WORKDIR/student)")
    p.add_argument("workdir", help="the workdir of a `lelp run`")
    p.add_argument("--method", help="export the best-on-validation run of this method")
    p.add_argument("--seed", type=int, help="export this seed's run")
    p.add_argument("--out", help="bundle folder (default WORKDIR/student; replaced)")
    args = p.parse_args(list(argv))
    if not Path(args.workdir).is_dir():
        raise ConfigError(f"workdir {args.workdir!r} does not exist; pass the --workdir of a finished `lelp run`.")
    out, chosen = export_student(args.workdir, method=args.method, seed=args.seed, out=args.out)
    print(usage_line(out, chosen), flush=True)
    return 0
