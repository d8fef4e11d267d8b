"""`lelp report` on fabricated result files: the table's numbers and every plot file."""
import json
import re

import numpy as np
import pytest

from lelp_jax import report


def _run(method, seed, last, best, params=123):
    hist = [{"step": s, "train_loss": 1.0 / s, "val_accuracy": 0.5 + 0.01 * s} for s in (10, 20)]
    return {"method": method, "seed": seed, "test_accuracy_last": last, "test_accuracy_best_val": best,
            "best_val_accuracy": 0.7, "best_step": 20, "student_params": params, "teacher_params": 999,
            "teacher_test_accuracy": 0.95, "wall_time_s": 1.0, "steps": 20, "overrides": {}, "history": hist}


def _fabricate(root, rng, *, with_results_json=True):
    accs = {m: rng.uniform(0.6, 0.9, size=(3, 2)) for m in ("ce", "kd", "lelp")}
    runs = [_run(m, s, float(a[s, 0]), float(a[s, 1])) for m, a in accs.items() for s in range(3)]
    for r in runs:  # what the split taught (the same fit for every seed)
        if r["method"] == "lelp":
            r.update(split_entropy=0.8123, split_top_share=0.4987, split_nmi=None)
    teacher = {"model": "mlp", "test_accuracy": 0.9512, "params": 4321}
    root.mkdir(parents=True, exist_ok=True)
    if with_results_json:
        (root / "results.json").write_text(json.dumps(
            {"dataset": "digits_binary", "config_name": "tiny", "teacher": teacher, "runs": runs}))
    else:
        for r in runs:
            d = root / "runs" / r["method"] / f"seed_{r['seed']}"
            d.mkdir(parents=True)
            hist = r.pop("history")
            (d / "result.json").write_text(json.dumps(r))
            (d / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in hist) + '{"step": 3')
        (root / "teacher").mkdir()
        (root / "teacher" / "teacher.json").write_text(json.dumps(teacher))
        (root / "config.json").write_text(json.dumps({"name": "tiny", "data": {"name": "digits_binary"}}))
    (root / "subclass_teacher").mkdir()
    (root / "subclass_teacher" / "result.json").write_text(json.dumps(_run("subclass_teacher", 0, 0.9, 0.91, 5000)))
    np.savez(root / "projections.npz", eigenvalues=np.sort(rng.uniform(0, 2, size=(2, 8)))[:, ::-1],
             metadata=np.array("{}"))
    sweep_points = []
    for s_ in (1, 2, 4):
        for beta in (0.5, 1.0):
            summ = {m: {"test_accuracy_last": {"mean": 0.8, "std": 0.01}, "test_accuracy_best_val":
                        {"mean": 0.8 + 0.01 * s_ + beta / 100, "std": 0.02}, "n": 2} for m in ("kd", "lelp")}
            sweep_points.append({"name": f"lelp.beta={beta},lelp.num_subclasses={s_}", "status": "done",
                                 "overrides": {"lelp.num_subclasses": s_, "lelp.beta": beta},
                                 "workdir": "x", "summary": summ})
    (root / "sweep").mkdir()
    (root / "sweep" / "summary.json").write_text(json.dumps(
        {"axes": ["lelp.num_subclasses", "lelp.beta"], "grid": {"lelp.beta": [0.5, 1.0], "lelp.num_subclasses": [1, 2, 4]},
         "seeds": [0, 1],
         "dataset": "digits_binary", "config_name": "tiny", "points": sweep_points}))
    return accs


@pytest.mark.parametrize("with_results_json", [True, False])
def test_report_table_and_plots(tmp_path, rng, with_results_json):
    accs = _fabricate(tmp_path / "wd", rng, with_results_json=with_results_json)
    res = report.build_report([tmp_path / "wd"], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## digits_binary" in md and "| teacher (mlp) | 95.12 | 95.12 | 4,321 |" in md
    assert "| subclass teacher (C*S head) | 90.00 | 91.00 | 5,000 | – |" in md
    for m, a in accs.items():
        row = next(line for line in md.splitlines() if line.startswith(f"| {m} |"))
        nums = [float(x) for x in re.findall(r"\d+\.\d+", row.split("| 123 |")[0])]
        ref = [100 * a[:, 0].mean(), 100 * a[:, 0].std(), 100 * a[:, 1].mean(), 100 * a[:, 1].std()]
        np.testing.assert_allclose(nums, ref, atol=0.006)  # 2 decimals
        assert row.rstrip().endswith("| 123 | 3 | 0.81 | 0.50 | – |" if m == "lelp" else "| 123 | 3 | – | – | – |")
    assert "split entropy: the split's mean normalised entropy" in md
    assert "| lelp.num_subclasses | lelp.beta | kd (best val) | lelp (best val) | status |" in md  # grid order
    names = sorted(p.rsplit("/", 1)[-1] for p in res["plots"])
    assert names == sorted(["digits_binary_tiny_spectrum.png", "digits_binary_tiny_curves.png",
                            "digits_binary_tiny_sweep_lelp.num_subclasses.png", "digits_binary_tiny_sweep_lelp.beta.png"])
    for p in res["plots"]:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
        assert f"]({p.rsplit('/', 1)[-1]})" in md


def test_report_main_and_errors(tmp_path, rng, capsys):
    _fabricate(tmp_path / "wd", rng)
    assert report.main([str(tmp_path / "wd"), "--out", str(tmp_path / "o")]) == 0
    assert "| lelp |" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no results"):
        report.build_report([tmp_path / "empty"], tmp_path / "o2")
    with pytest.raises(ValueError, match="not a folder"):
        report.main([str(tmp_path / "nope")])
    assert not (tmp_path / "nope").exists()  # the default output folder is not created for a bad input


def test_two_workdirs_of_a_dataset_share_one_table(tmp_path, rng):
    _fabricate(tmp_path / "a", rng)
    _fabricate(tmp_path / "b", rng, with_results_json=False)
    res = report.build_report([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.count("| model |") == 1 and list(res["tables"]) == ["digits_binary"]
    for label in ("tiny [a]", "tiny [b]"):
        assert f"| {label}: teacher (mlp) |" in md and f"| {label}: lelp |" in md
    assert len({p.rsplit("/", 1)[-1] for p in res["plots"]}) == 8  # every workdir's plots, no name clash


def test_report_on_a_tiny_run_of_the_comparison_methods(tmp_path):
    """A real (tiny) digits_binary run of every comparison method, then the report."""
    from lelp_jax import pipeline
    from lelp_jax.config import load_config

    steps = [f"{s}.{k}={v}" for s in ("teacher.train", "train")
             for k, v in (("num_steps", 4), ("eval_every", 2), ("checkpoint_every", 4), ("log_every", 2))]
    cfg = load_config("digits_binary", ["smoke=true", "methods=kmeans,agglomerative,oracle,lelp_kmeans,fitnet,rkd,subclass", "seeds=0",
                                        "lelp.num_subclasses=2", "subclass.num_subclasses=2", "teacher_cache=true"] + steps)
    results = pipeline.run_all(cfg, tmp_path, log=lambda m: None)
    assert [r["method"] for r in results["runs"]] == ["kmeans", "agglomerative", "oracle", "lelp_kmeans", "fitnet", "rkd",
                                                      "subclass"]
    sub = json.loads((tmp_path / "subclass_teacher" / "result.json").read_text())
    assert sub["steps"] == 4 and sub["method"] == "subclass_teacher"
    by = {r["method"]: r for r in results["runs"]}
    # head widths: C*S for the pseudo-subclass methods, C for feature KD (the adapter is not counted);
    # the oracle has its own S = 5 (digits per parity class), not lelp.num_subclasses = 2
    assert (by["kmeans"]["student_params"] == by["agglomerative"]["student_params"]
            == by["subclass"]["student_params"])
    hidden = cfg.student.model_kwargs.hidden[-1]
    assert by["oracle"]["student_params"] - by["kmeans"]["student_params"] == (hidden + 1) * 2 * (5 - 2)
    assert by["fitnet"]["student_params"] == by["rkd"]["student_params"] < by["kmeans"]["student_params"]
    # what each split taught, on the train split: the oracle's is hard; feature KD does not split
    assert by["oracle"]["split_entropy"] == 0.0 and by["oracle"]["split_top_share"] == 1.0
    for m in ("kmeans", "agglomerative", "oracle", "lelp_kmeans"):
        assert 0.0 <= by[m]["split_entropy"] < 1.0 and 0.5 <= by[m]["split_top_share"] <= 1.0
        assert 0.0 < by[m]["split_nmi"] <= 1.0 and by[m]["split_betas"] is None
    from sklearn.metrics import normalized_mutual_info_score

    src, _ = pipeline.Run(cfg, tmp_path).split("train")
    y = np.asarray([src[i]["label"] for i in range(len(src))])
    fine = np.asarray([src[i]["fine_label"] for i in range(len(src))])
    slot = np.array([sorted(set(fine[y == c])).index(f) for f, c in zip(fine, y)])  # one slot per fine label
    assert by["oracle"]["split_nmi"] == pytest.approx(normalized_mutual_info_score(fine, 5 * y + slot), abs=1e-9)
    assert by["oracle"]["split_nmi"] == pytest.approx(1.0, abs=1e-9)  # the exact oracle: slot = fine label
    assert "split_entropy" not in by["fitnet"] and "split_entropy" not in by["subclass"]
    out = report.build_report([tmp_path], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    for m in ("kmeans", "agglomerative", "oracle", "lelp_kmeans", "fitnet", "rkd", "subclass"):
        assert f"| {m} |" in md
    assert "| subclass teacher (C*S head) |" in md
    assert sorted(p.rsplit("/", 1)[-1] for p in out["plots"]) == ["digits_binary_digits_binary_curves.png"]


def test_sweep_plot_reference_bands_and_axes(tmp_path):
    """kd/ce bands: mean ± t_{0.975,n-1} * sample sd / sqrt(n) at the point chosen on validation."""
    def st(mean, std, val, n=3):
        return {"test_accuracy_best_val": {"mean": mean, "std": std}, "best_val_accuracy": {"mean": val}, "n": n}

    points = [{"name": f"kd.tau={t}", "overrides": {"kd.tau": t}, "status": "done",
               "summary": {"kd": st(0.9 + t / 100, 0.01 * t, 0.8 + (t == 2) / 10)}} for t in (1.0, 2.0, 4.0)]
    points += [{"name": "defaults", "overrides": {}, "status": "done", "summary": {"ce": st(0.88, 0.02, 0.7, n=4)}}]
    points += [{"name": f"e={e}", "overrides": {"lelp.target_entropy": e}, "status": "done",
                "summary": {"lelp": st(0.9, 0.01, 0.8)}} for e in (0.5, 0.9)]
    sweep = {"grid": {"kd.tau": [1.0, 2.0, 4.0], "lelp.target_entropy": [0.5, 0.9]}, "points": points}
    mean, half, n = report.plots._reference_band(sweep, "kd", "test_accuracy_best_val")  # noqa: SLF001
    sd = 0.02 * np.sqrt(3 / 2)  # population std 0.02 at tau=2 (chosen on validation) -> sample sd
    assert (mean, n) == (0.92, 3)
    np.testing.assert_allclose(half, 4.302652729911275 * sd / np.sqrt(3), rtol=1e-9)  # t_{0.975, 2}
    mean, half, n = report.plots._reference_band(sweep, "ce", "test_accuracy_best_val")  # noqa: SLF001
    np.testing.assert_allclose(half, 3.182446305284263 * 0.02 * np.sqrt(4 / 3) / 2, rtol=1e-9)
    assert report.plots._reference_band(sweep, "oracle", "test_accuracy_best_val") is None  # noqa: SLF001
    for key in ("kd.tau", "lelp.target_entropy"):
        p = report.plot_sweep(sweep, key, tmp_path / f"{key}.png", title="a title " * 30)
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_sweep_cells_and_plots_show_their_inputs(tmp_path, rng, monkeypatch):
    """Every sweep-table cell, and the data of every plotted line, against the fabricated inputs."""
    accs = _fabricate(tmp_path / "wd", rng)
    path = tmp_path / "wd" / "sweep" / "summary.json"
    sweep = json.loads(path.read_text())
    for p in sweep["points"]:  # fresh random cells
        for m in p["summary"].values():
            m["test_accuracy_best_val"] = {"mean": float(rng.uniform(0.6, 0.9)), "std": float(rng.uniform(0, 0.05))}
            m["n"] = int(rng.integers(1, 6))
    path.write_text(json.dumps(sweep))
    figures = []
    real_figure = report.plots._figure
    monkeypatch.setattr(report.plots, "_figure", lambda **kw: figures.append(real_figure(**kw)) or figures[-1])
    report.build_report([tmp_path / "wd"], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text().splitlines()

    checked = 0
    for p in sweep["points"]:
        s_, beta = p["overrides"]["lelp.num_subclasses"], p["overrides"]["lelp.beta"]
        row = [ln for ln in md if ln.startswith(f"| {s_} | {beta} | ")]
        assert len(row) == 1, row
        cells = [c.strip() for c in row[0].strip("|").split("|")]
        for cell, m in zip(cells[2:4], ("kd", "lelp")):
            want = p["summary"][m]
            nums = [float(x) for x in re.findall(r"\d+\.\d+", cell)]
            np.testing.assert_allclose(nums, [100 * want["test_accuracy_best_val"]["mean"],
                                              100 * want["test_accuracy_best_val"]["std"]], atol=0.006)
            assert cell.endswith(f"(n={want['n']})")
            checked += 1
        assert cells[4] == "done"
    assert checked == 2 * len(sweep["points"]) == 12

    axes = [ax for fig in figures for ax in fig.axes]
    by_xlabel = {}
    for ax in axes:
        by_xlabel.setdefault(ax.get_xlabel(), []).append(ax)
    # sweep against S: one errorbar line per (method, beta), y = 100 * mean, error = 100 * std
    (ax,) = by_xlabel["lelp.num_subclasses"]
    seen = 0
    for cont in ax.containers:
        method, beta = cont.get_label().split(", beta=")
        pts = sorted((p["overrides"]["lelp.num_subclasses"], p["summary"][method]["test_accuracy_best_val"])
                     for p in sweep["points"] if p["overrides"]["lelp.beta"] == float(beta))
        xs, ys = cont.lines[0].get_data()
        np.testing.assert_allclose(np.asarray(xs, float), [x for x, _ in pts])
        ys = np.asarray(ys, float)
        np.testing.assert_allclose(ys, [100 * v["mean"] for _, v in pts], rtol=1e-12)
        seg = cont.lines[2][0].get_segments()  # the error bars: from y - err to y + err
        np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in seg], [200 * v["std"] for _, v in pts], rtol=1e-9)
        seen += 1
    assert seen == 2  # lelp at beta 0.5 and 1.0 (kd, not swept on this key, is a reference band: tested above)
    # learning curves: per method, the mean over seeds of each step's validation accuracy and train loss
    curves = by_xlabel["step"]
    assert len(curves) == 2
    for ax in curves:
        key = "val_accuracy" if ax.get_ylabel() == "validation accuracy" else "train_loss"
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        assert sorted(lines) == sorted(accs)
        for ln in lines.values():
            xs, ys = (np.asarray(v, float) for v in ln.get_data())
            np.testing.assert_allclose(xs, [10, 20])
            want = [0.5 + 0.01 * s for s in (10, 20)] if key == "val_accuracy" else [1.0 / s for s in (10, 20)]
            np.testing.assert_allclose(ys, want, rtol=1e-12)
    # spectrum: each class's eigenvalues, descending
    (ax,) = by_xlabel["eigenvalue index"]
    ev = np.load(tmp_path / "wd" / "projections.npz")["eigenvalues"]
    lines = ax.get_lines()
    assert len(lines) == 2
    for c, ln in enumerate(lines):
        np.testing.assert_allclose(np.asarray(ln.get_ydata(), float), np.sort(ev[c])[::-1], rtol=1e-12)
