"""What each splitting method taught in an existing workdir: split entropy, top share, NMI (train split).

Runs made before the diagnostics were recorded in result.json (commit 127847c) lack them; this
computes the same numbers (`lelp_jax.pipeline.split_diagnostics`) from the workdir's own config,
teacher outputs and fitted artifacts, without training anything:

    python docs/results/diagnose.py WORKDIR lelp,random,pca,kmeans,oracle [--out FILE.json] [--md]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import ml_collections

from lelp_jax.config import base_config
from lelp_jax.methods import get_method
from lelp_jax.pipeline import Run, method_aux, split_diagnostics


def _update(node: ml_collections.ConfigDict, stored: dict) -> None:
    for k, v in stored.items():
        if isinstance(v, dict) and isinstance(node.get(k), ml_collections.ConfigDict):
            _update(node[k], v)
        else:
            node[k] = tuple(v) if isinstance(v, list) else v


def workdir_config(workdir: Path) -> ml_collections.ConfigDict:
    """base_config() overwritten by WORKDIR/config.json (keys it lacks keep their base defaults)."""
    c = base_config()
    _update(c, json.loads((workdir / "config.json").read_text()))
    return c


def diagnose(workdir: Path, methods: list[str]) -> dict[str, dict]:
    run = Run(workdir_config(workdir), workdir)
    out = {}
    for name in methods:
        method = get_method(name)
        aux = method_aux(method, run)
        out[name] = split_diagnostics(method, aux, run)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir", type=Path)
    p.add_argument("methods")
    p.add_argument("--out", type=Path)
    p.add_argument("--md", action="store_true", help="a markdown table instead of JSON")
    a = p.parse_args(argv)
    res = diagnose(a.workdir, a.methods.split(","))
    text = json.dumps(res, indent=1, sort_keys=True)
    if a.md:
        rows = ["| method | split entropy | top-subclass share | NMI with the fine label |", "|---|---|---|---|"]
        for m, d in res.items():
            nmi = "–" if d.get("split_nmi") is None else f"{d['split_nmi']:.2f}"
            rows.append(f"| {m} | {d['split_entropy']:.2f} | {d['split_top_share']:.2f} | {nmi} |")
        text = "\n".join(rows)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
