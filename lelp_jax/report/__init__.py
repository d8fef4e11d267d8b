"""`lelp report WORKDIR...`: Markdown tables and PNG plots from result files only.

Loading is `report.load`, the tables `report.tables`, the plots `report.plots`; statistics over
seeds (mean ± std, paired intervals) are `lelp_jax.protocol.paired`.

Reads, per workdir (never a checkpoint, never a model):
  results.json (or, without it, every runs/METHOD/seed_K/result.json), teacher/teacher.json,
  projections.npz (eigenvalues for the spectrum plot), runs/*/seed_*/metrics.jsonl (curves,
  when a result carries no history), sweep/summary.json (accuracy against each swept key).

Writes to OUT_DIR:
  report.md                        one table per dataset: each workdir's teacher, then every
                                   method's test accuracy (mean ± std over seeds) at the last step
                                   and at the best-validation step, student parameters, number of
                                   seeds (rows prefixed by the config name when several workdirs
                                   share a dataset); per workdir the paired differences of every
                                   method to kd and ce (95 % t-interval over shared seeds, "inside
                                   noise" when it covers 0; lelp_jax.protocol.paired) and the fraction of the
                                   oracle's room; one table per sweep
  TAG_spectrum.png                 per-class eigen-spectrum of the teacher embeddings (log scale)
  TAG_curves.png                   validation accuracy and train loss against step, per method
                                   (mean over seeds)
  TAG_sweep_KEY.png                test accuracy (best val) against each swept key, one line
                                   per method and combination of the other keys; error bars = std;
                                   kd and ce as reference bands (mean ± 95 % t-interval) when the
                                   key is another method's; log axis for scales, logit axis for
                                   entropy targets
With ``--select-on validation`` (sweeps run with ``--test-seeds``), each sweep's section also
gives every method's settings chosen on validation, their test accuracy on the fresh seeds and
the paired differences (lelp_jax.protocol.selection, docs/PROTOCOL.md).
TAG is ``DATASET_CONFIGNAME`` made file-name safe (with a counter if two workdirs clash).
Std is the population std over seeds (numpy's default, ddof=0): 0 for one seed.
"""
from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from lelp_jax.core import atomic
from lelp_jax.protocol.paired import method_table, paired_table, per_seed
from lelp_jax.report.load import load_workdir
from lelp_jax.report.plots import labelled_share, plot_curves, plot_fraction, plot_spectrum, plot_sweep
from lelp_jax.report.tables import (PAIRED_NOTE, SPLIT_NOTE, TABLE_HEAD, format_table, sweep_axes, sweep_table,
                                    table_rows)
from lelp_jax.protocol.selection import selection_section

__all__ = ["load_workdir", "method_table", "per_seed", "table_rows", "format_table", "build_report", "main"]


def _tag(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def _labels(ws: Sequence[Mapping[str, Any]]) -> list[str]:
    """Row/section labels: the config name, or the folder name where config names repeat."""
    names = [str(w["config_name"]) for w in ws]
    return [n if names.count(n) == 1 else f"{n} [{Path(w['root']).name}]" for n, w in zip(names, ws)]


def build_report(workdirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                 select_on: Optional[str] = None) -> dict[str, Any]:
    """Write ``report.md`` and the PNG plots for ``workdirs`` into ``out_dir``.

    ``select_on='validation'``: every workdir must hold a sweep run with ``--test-seeds``; its
    section gives each method's settings chosen on validation and their test accuracy on the
    fresh seeds, paired by seed (:func:`lelp_jax.protocol.selection.selection_section`).

    Returns ``{"markdown": path, "plots": [paths], "tables": {dataset: markdown}}``.
    """
    if not workdirs:
        raise ValueError("lelp report: pass at least one workdir.")
    if select_on not in (None, "validation"):
        raise ValueError(f"lelp report: --select-on must be 'validation' (never test), got {select_on!r}.")
    loaded = [load_workdir(w) for w in workdirs]  # every input checked before anything is written
    selected = {}
    if select_on:
        for w in loaded:
            if w["sweep"] is None:
                raise ValueError(f"lelp report --select-on validation: {str(w['root'])!r} holds no sweep; pass the "
                                 "--workdir of a `lelp sweep ... --test-seeds ...`.")
            selected[w["root"]] = selection_section(Path(w["root"]), w["sweep"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_dataset: dict[str, list[dict]] = {}
    for w in loaded:
        by_dataset.setdefault(str(w["dataset"]), []).append(w)
    md = ["# lelp report", "", "Test accuracy in %, mean ± std over seeds (population std); "
          "'last' = final step, 'best val' = the step with the best validation accuracy.", ""]
    plots: list[str] = []
    tables: dict[str, str] = {}
    used: set[str] = set()
    for dataset, ws in by_dataset.items():
        md += [f"## {dataset}", ""]
        labels = _labels(ws)
        with_rows = [(w, lab) for w, lab in zip(ws, labels) if w["runs"] or w["teacher"]]
        if with_rows:
            lines = list(TABLE_HEAD)
            for w, lab in with_rows:
                lines += table_rows(w["teacher"], method_table(w["runs"]), w["subclass_teacher"],
                                    prefix=f"{lab}: " if len(with_rows) > 1 else "")
            tables[dataset] = "\n".join(lines)
            md += [tables[dataset], "", SPLIT_NOTE, ""]
            for w, lab in with_rows:
                rows = paired_table(per_seed(w["runs"]))
                if rows:
                    md += [f"Paired by seed{f' ({lab})' if len(with_rows) > 1 else ''}: {PAIRED_NOTE}", "",
                           *rows, ""]
        for w, lab in zip(ws, labels):
            tag = _tag(f"{dataset}_{w['config_name']}")
            base, i = tag, 1
            while tag in used:
                i += 1
                tag = f"{base}_{i}"
            used.add(tag)
            section = []
            if w["eigenvalues"] is not None:
                p = plot_spectrum(w["eigenvalues"], out / f"{tag}_spectrum.png",
                                  title=f"{dataset} / {lab}: teacher-embedding spectrum per class")
                plots.append(str(p))
                section.append(f"![spectrum]({p.name})")
            if any(r.get("history") for r in w["runs"]):
                p = plot_curves(w["runs"], out / f"{tag}_curves.png", title=f"{dataset} / {lab}")
                plots.append(str(p))
                section.append(f"![curves]({p.name})")
            if w["root"] in selected:
                lines, acc = selected[w["root"]]
                section += [*lines, ""]
                rows = paired_table(acc)
                if rows:
                    section += [f"Chosen settings paired by test seed: {PAIRED_NOTE}", "", *rows, ""]
            if w["sweep"] is not None and w["sweep"].get("points"):
                sweep = w["sweep"]
                section += ["", f"Sweep over {', '.join(sweep_axes(sweep))} (seeds {sweep.get('seeds')}):", "",
                            sweep_table(sweep), ""]
                for key in sweep_axes(sweep):
                    p = plot_sweep(sweep, key, out / f"{tag}_sweep_{_tag(key)}.png",
                                   title=f"{dataset} / {lab}: accuracy against {key}")
                    plots.append(str(p))
                    section.append(f"![sweep {key}]({p.name})")
            if section:
                md += [f"### {lab} (`{w['root']}`)", ""] + section + [""]
        shares = [(labelled_share(w["runs"]), w["runs"]) for w in ws if w["runs"]]
        if len({f for f, _ in shares if f is not None}) > 1:  # workdirs differing in their labelled share
            p = plot_fraction([(f, rs) for f, rs in shares if f is not None],
                              out / f"{_tag(dataset)}_labelled_share.png",
                              title=f"{dataset}: test accuracy against the labelled share (95 % intervals over seeds)")
            plots.append(str(p))
            md += [f"![labelled share]({p.name})", ""]
    md_path = out / "report.md"
    atomic.write_text(md_path, "\n".join(md) + "\n")
    return {"markdown": str(md_path), "plots": plots, "tables": tables}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``lelp report WORKDIR... [--out DIR]``: write report.md and plots (default DIR: FIRST_WORKDIR/report)."""
    p = argparse.ArgumentParser(prog="lelp report", description="Markdown tables and PNG plots from result files.")
    p.add_argument("workdirs", nargs="+", help="workdirs written by `lelp run` / `lelp sweep`")
    p.add_argument("--out", default=None, help="output folder (default: FIRST_WORKDIR/report)")
    p.add_argument("--select-on", choices=["validation"], default=None,
                   help="for sweeps run with --test-seeds: each method's settings chosen on validation, "
                        "their test accuracy on the fresh seeds, paired (docs/PROTOCOL.md)")
    args = p.parse_args(list(argv) if argv is not None else None)
    out = args.out or os.path.join(args.workdirs[0], "report")
    res = build_report(args.workdirs, out, select_on=args.select_on)
    print(f"wrote {res['markdown']} and {len(res['plots'])} plots")
    print(Path(res["markdown"]).read_text())
    return 0
