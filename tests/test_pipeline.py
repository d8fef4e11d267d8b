"""The whole `lelp run` on digits_binary end to end (smoke size), resume, extension, workdir rules."""
import json
import os

import numpy as np
import pytest

from lelp_jax import cli, pipeline
from lelp_jax.config import load_config

CONFIG = "configs/digits_binary.py"


def snapshot(root):
    """Every artifact under root with its size and mtime (ns); the workdir lock (rewritten by every
    command that takes it, lelp_jax/runtime/lock.py) is not an artifact."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if name == ".lock":
                continue
            p = os.path.join(dirpath, name)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def env_dirs(tmp_path_factory):
    """A shared tfds data dir and no persistent compilation cache (tests write nothing outside tmp)."""
    old = os.environ.get("LELP_JAX_CACHE_DIR")
    os.environ["LELP_JAX_CACHE_DIR"] = "off"
    yield {"data_dir": str(tmp_path_factory.mktemp("tfds"))}
    if old is None:
        os.environ.pop("LELP_JAX_CACHE_DIR", None)
    else:
        os.environ["LELP_JAX_CACHE_DIR"] = old


def smoke_args(workdir, data_dir):
    return [
        "--config", CONFIG, "--workdir", str(workdir), "--config.smoke=true", f"--config.data.data_dir={data_dir}",
        "--config.teacher.train.num_steps=40", "--config.train.num_steps=20", "--config.train.checkpoint_every=0",
        "--config.teacher.train.checkpoint_every=0",
    ]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, env_dirs):
    """`lelp run --methods ce,kd`, then `lelp run --methods ce,kd,lelp,pca` in the same workdir."""
    workdir = tmp_path_factory.mktemp("run") / "wd"
    base = smoke_args(workdir, env_dirs["data_dir"])
    assert cli.main(["run", *base, "--methods", "ce,kd"]) == 0
    first = json.loads((workdir / "results.json").read_text())
    ce_before = snapshot(workdir / "runs" / "ce")
    assert cli.main(["run", *base, "--methods", "ce,kd,lelp,pca"]) == 0
    return {"workdir": workdir, "base": base, "first": first, "ce_before": ce_before}


def test_run_produces_results_for_every_method(finished_run):
    wd = finished_run["workdir"]
    results = json.loads((wd / "results.json").read_text())
    assert results["dataset"] == "digits_binary" and results["config_name"] == "digits_binary"
    assert [(r["method"], r["seed"]) for r in results["runs"]] == [("ce", 0), ("kd", 0), ("lelp", 0), ("pca", 0)]
    teacher = results["teacher"]
    assert teacher["source"] == "trained" and teacher["params"] > 10 * results["runs"][0]["student_params"]
    assert 0.5 < teacher["test_accuracy"] <= 1.0
    required = ("method", "seed", "overrides", "test_accuracy_last", "test_accuracy_best_val", "best_val_accuracy",
                "best_step", "student_params", "teacher_params", "teacher_test_accuracy", "wall_time_s", "steps",
                "history")
    for r in results["runs"]:
        assert all(k in r for k in required), sorted(set(required) - set(r))
        assert r["steps"] == 20 and 0.0 <= r["test_accuracy_best_val"] <= 1.0
        assert r["teacher_test_accuracy"] == teacher["test_accuracy"]
        assert r["overrides"]["train.num_steps"] == 20 and r["overrides"]["smoke"] is True
    # LELP-type students have a C*S head: S = 5 subclasses per class.
    by = {r["method"]: r for r in results["runs"]}
    assert by["lelp"]["student_params"] > by["ce"]["student_params"]
    for name in ("config.json", "teacher/teacher.json", "statistics.npz", "projections.npz", "projections_pca.npz"):
        assert (wd / name).exists(), name
    stored = json.loads((wd / "config.json").read_text())
    assert stored["train"]["num_steps"] == 20 and stored["methods"] == ["ce", "kd", "lelp", "pca"]
    assert "split_entropy" not in by["ce"] and "split_entropy" not in by["kd"]


def test_every_split_records_what_it_taught(finished_run):
    """lelp's split_entropy / split_top_share / split_nmi in result.json equal a float64 reference: standardised
    z of every train embedding, softmax(z / beta) of the true class, NMI against the digit (sklearn)."""
    from sklearn.metrics import normalized_mutual_info_score

    from lelp_jax.core.projections import load_projections

    wd = finished_run["workdir"]
    by = {r["method"]: r for r in json.loads((wd / "results.json").read_text())["runs"]}
    config = load_config(CONFIG, [a for a in finished_run["base"] if a.startswith("--config.")])
    run = pipeline.Run(config, wd)
    emb = np.asarray(run.train_outputs[0], np.float64)
    source, _ = run.split("train")
    y = np.asarray([source[i]["label"] for i in range(len(source))])
    fine = np.asarray([source[i]["fine_label"] for i in range(len(source))])
    for name, path in (("lelp", "projections.npz"), ("pca", "projections_pca.npz")):
        proj = load_projections(wd / path)
        u, mu, sd = (np.asarray(a, np.float64) for a in (proj.directions, proj.means, proj.scales))
        z = np.einsum("bd,bds->bs", emb - mu[y], u[y]) / sd[y] / config.lelp.beta  # own class only
        q = np.exp(z - z.max(1, keepdims=True))
        q /= q.sum(1, keepdims=True)
        s = q.shape[1]
        r = by[name]
        assert r["split_entropy"] == pytest.approx((-(q * np.log(q)).sum(1) / np.log(s)).mean(), abs=1e-4), name
        assert r["split_top_share"] == pytest.approx(q.max(1).mean(), abs=1e-4), name
        assert r["split_nmi"] == pytest.approx(normalized_mutual_info_score(fine, y * s + q.argmax(1)), abs=1e-3), name
        assert r["split_betas"] is None


def test_extending_methods_reuses_finished_runs(finished_run):
    wd = finished_run["workdir"]
    assert [r["method"] for r in finished_run["first"]["runs"]] == ["ce", "kd"]
    assert snapshot(wd / "runs" / "ce") == finished_run["ce_before"]  # not retrained


def test_rerun_is_a_noop(finished_run, capsys):
    wd = finished_run["workdir"]
    before = snapshot(wd)
    assert cli.main(["run", *finished_run["base"], "--methods", "ce,kd,lelp,pca"]) == 0
    out = capsys.readouterr().out
    assert snapshot(wd) == before
    for stage in ("teacher", "statistics", "fit", "distill", "eval"):
        assert f"[{stage}] already done, skipped" in out


def test_one_run_runs_every_stage(tmp_path, env_dirs, monkeypatch):
    """A ``Run`` built from (config, workdir) runs every stage of ``STAGES`` (each takes only the run and returns
    its summary), loading each data split once and sharing the teacher's outputs; a new Run of the finished
    workdir skips every stage; ``run_stages`` refuses a run of another workdir."""
    from lelp_jax.pipeline import context
    from lelp_jax.pipeline.teacher import load_teacher_cache

    loaded = []
    real = context.load_splits

    def counting(data, name):
        out = real(data, name)
        loaded.extend(out[0])
        return out

    monkeypatch.setattr(context, "load_splits", counting)
    wd = tmp_path / "wd"
    args = [a for a in smoke_args(wd, env_dirs["data_dir"]) if a.startswith("--config.")]
    config = load_config(CONFIG, args + ["--config.teacher_cache=true", "--config.teacher.train.num_steps=10",
                                         "--config.train.num_steps=4"], methods="kd,lelp,kmeans", seeds="0")
    run = pipeline.Run(config, wd)
    pipeline.preflight(run)
    pipeline.init_workdir(config, wd)
    out = {name: stage(run) for name, stage in pipeline.STAGES.items()}
    assert list(out) == ["teacher", "teacher_outputs", "statistics", "fit", "distill", "eval"]
    assert not any(o.get("skipped") or o.get("not_needed") for o in out.values()), out
    assert out["teacher"]["source"] == "trained" and out["eval"]["runs"] == 3
    assert sorted(loaded) == ["test", "train", "validation"]  # each split loaded once for all six stages
    cached = load_teacher_cache(str(run.workdir.teacher_outputs("train")))
    np.testing.assert_array_equal(run.train_outputs[0], cached.embeddings)  # what kmeans and the diagnostics read
    results = json.loads(run.workdir.results.read_text())
    assert [(r["method"], r["seed"]) for r in results["runs"]] == [("kd", 0), ("lelp", 0), ("kmeans", 0)]
    again = pipeline.Run(config, wd)
    assert all(o.get("skipped") for o in (stage(again) for stage in pipeline.STAGES.values()))
    with pytest.raises(ValueError, match="another config or workdir"):
        pipeline.run_stages(config, tmp_path / "other", stages=["eval"], run=again)


def test_statistics_match_numpy_on_teacher_embeddings(finished_run):
    """statistics.npz holds the per-class count/mean/M2 of the teacher's train embeddings (float64 check)."""
    import jax

    wd = finished_run["workdir"]
    config = load_config(CONFIG, [a for a in finished_run["base"] if a.startswith("--config.")])
    run = pipeline.Run(config, wd)
    model, variables = run.teacher
    source, info = run.split("train")
    rows = [source[i] for i in range(len(source))]
    batch = {"image": np.stack([r["image"] for r in rows])}
    emb, _ = model.apply(jax.device_get(variables), batch, train=False)
    emb = np.asarray(emb, np.float64)
    labels = np.asarray([r["label"] for r in rows])
    with np.load(wd / "statistics.npz") as f:
        count, mean, m2 = f["count"], f["mean"], f["m2"]
    for c in range(info.num_classes):
        h = emb[labels == c]
        mu = h.mean(0)
        assert count[c] == len(h)
        np.testing.assert_allclose(mean[c], mu, atol=1e-4 * (1 + np.abs(mu).max()))
        ref = (h - mu).T @ (h - mu)
        np.testing.assert_allclose(m2[c], ref, atol=1e-3 * (1 + np.abs(ref).max()))


def test_projection_settings_are_recorded(finished_run):
    from lelp_jax.core.projections import load_projections

    wd = finished_run["workdir"]
    lelp = load_projections(wd / "projections.npz")
    pca = load_projections(wd / "projections_pca.npz")
    assert lelp.num_subclasses == 5 and lelp.null_space and lelp.rotate
    assert not pca.null_space and not pca.rotate
    s = dict(lelp.settings)
    assert s["fit_labels"] == "labels" and s["standardize"] is True and s["method"] == "lelp"
    assert "beta" not in s and "tau" not in s  # loss-time settings: one stored fit serves every beta
    assert s["teacher"].startswith("mlp@") and s["teacher"].endswith("teacher")


def test_teacher_checkpoint_is_loaded_not_retrained(finished_run, tmp_path, env_dirs, capsys):
    src = finished_run["workdir"]
    wd = tmp_path / "reuse"
    args = smoke_args(wd, env_dirs["data_dir"])
    assert cli.main(["teacher", *args, f"--config.teacher.checkpoint={src}"]) == 0
    assert "checkpoint teacher" in capsys.readouterr().out
    loaded = json.loads((wd / "teacher" / "teacher.json").read_text())
    trained = json.loads((src / "teacher" / "teacher.json").read_text())
    assert loaded["source"] == "checkpoint"
    assert loaded["params"] == trained["params"]
    assert loaded["test_accuracy"] == pytest.approx(trained["test_accuracy"], abs=1e-9)
    assert not (wd / "teacher" / "checkpoints").exists()


def test_eval_names_missing_runs(finished_run, capsys):
    wd = finished_run["workdir"]
    before = snapshot(wd)
    rc = cli.main(["eval", *finished_run["base"], "--methods", "ce,kd,lelp,pca", "--seeds", "0,1"])
    err = capsys.readouterr().err
    assert rc == 2 and "runs not finished" in err and "ce/seed_1" in err and "pca/seed_1" in err
    # config.json records the latest methods/seeds; nothing else changed.
    changed = {k for k in snapshot(wd) if snapshot(wd)[k] != before.get(k)}
    assert changed <= {"config.json"}


def test_force_deletes_only_pipeline_artifacts(tmp_path):
    config = load_config(CONFIG, [])
    other = load_config(CONFIG, ["--config.lelp.beta=3"])
    wd = tmp_path / "wd"
    pipeline.init_workdir(config, wd)
    (wd / "runs" / "ce" / "seed_0").mkdir(parents=True)
    (wd / "runs" / "ce" / "seed_0" / "result.json").write_text("{}")
    (wd / "statistics.npz").write_bytes(b"x")
    (wd / "projections_random.npz").write_bytes(b"x")
    (wd / "my_notes.txt").write_text("mine")
    with pytest.raises(pipeline.WorkdirError, match="lelp.beta: 1.0 -> 3.0"):
        pipeline.init_workdir(other, wd)
    pipeline.init_workdir(other, wd, force=True)
    assert sorted(p.name for p in wd.iterdir()) == ["config.json", "my_notes.txt"]
    assert json.loads((wd / "config.json").read_text())["lelp"]["beta"] == 3.0


def test_workdir_from_before_a_new_key_is_accepted_at_its_default(tmp_path):
    """A config.json lacking a key (written before the key existed) reads it as base_config's default."""
    config = load_config(CONFIG, [])
    wd = tmp_path / "wd"
    pipeline.init_workdir(config, wd)
    stored = json.loads((wd / "config.json").read_text())
    del stored["kd"]["student_tau"], stored["data"]["features"]
    (wd / "config.json").write_text(json.dumps(stored))
    pipeline.check_workdir(config, wd)  # same settings: accepted
    with pytest.raises(pipeline.WorkdirError, match="kd.student_tau"):
        pipeline.check_workdir(load_config(CONFIG, ["--config.kd.student_tau=3"]), wd)
    # model_kwargs is free-form: base_config's entries there are no defaults of another model's.
    stored["student"]["model_kwargs"] = {**stored["student"]["model_kwargs"], "extra": 1}
    (wd / "config.json").write_text(json.dumps(stored))
    with pytest.raises(pipeline.WorkdirError, match="student.model_kwargs.extra"):
        pipeline.check_workdir(config, wd)


def test_workdir_from_before_scale_free_sharpness_keeps_its_settings(tmp_path):
    """A workdir made before standardised scores were the default records standardize=false (and k-means'
    'gmm' scale, temperature 1) and no target_entropy: passing those settings reuses it, the new defaults do not."""
    old = ["--config.lelp.standardize=false", "--config.kmeans.scale=gmm", "--config.kmeans.temperature=1.0"]
    wd = tmp_path / "wd"
    pipeline.init_workdir(load_config(CONFIG, old), wd)
    stored = json.loads((wd / "config.json").read_text())
    del stored["lelp"]["target_entropy"]
    (wd / "config.json").write_text(json.dumps(stored))
    pipeline.check_workdir(load_config(CONFIG, old), wd)  # absent target_entropy reads as its default, None
    with pytest.raises(pipeline.WorkdirError, match="lelp.standardize: False -> True"):
        pipeline.check_workdir(load_config(CONFIG, []), wd)
    with pytest.raises(pipeline.WorkdirError, match="lelp.target_entropy"):
        pipeline.check_workdir(load_config(CONFIG, [*old, "--config.lelp.target_entropy=0.5"]), wd)


def test_carved_validation_is_disjoint_seeded_and_reindexed():
    from lelp_jax.data.sources import ArraySource

    parent = ArraySource({"label": np.arange(50) % 2, "features": np.arange(100.0).reshape(50, 2)})
    rng = np.random.default_rng(0)
    perm = rng.permutation(50)
    val = pipeline.SubsetSource(parent, np.sort(perm[:5]))
    train = pipeline.SubsetSource(parent, np.sort(perm[5:]))
    assert len(val) == 5 and len(train) == 45
    seen = {float(val[i]["features"][0]) for i in range(5)} | {float(train[i]["features"][0]) for i in range(45)}
    assert len(seen) == 50
    assert [int(train[i]["index"]) for i in range(45)] == list(range(45))
    with pytest.raises(IndexError):
        val[5]


def test_cached_teacher_outputs_match_online(finished_run, tmp_path, env_dirs):
    """teacher_cache=True: outputs cached once; statistics and a KD run match the online workdir's."""
    src = finished_run["workdir"]
    wd = tmp_path / "cached"
    args = [a for a in smoke_args(wd, env_dirs["data_dir"])]
    assert cli.main(["distill", *args, "--config.teacher_cache=true", f"--config.teacher.checkpoint={src}",
                     "--methods", "kd,lelp"]) == 0
    with np.load(wd / "teacher_outputs" / "train.npz") as f:
        emb, logits = f["embeddings"], f["logits"]
    assert emb.shape[1] == 256 and logits.shape[1] == 2 and np.isfinite(emb).all()
    with np.load(wd / "statistics.npz") as a, np.load(src / "statistics.npz") as b:
        np.testing.assert_array_equal(a["count"], b["count"])
        np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a["m2"], b["m2"], rtol=1e-4, atol=1e-3)
    for method in ("kd", "lelp"):
        cached = json.loads((wd / "runs" / method / "seed_0" / "result.json").read_text())
        online = json.loads((src / "runs" / method / "seed_0" / "result.json").read_text())
        losses_c = [h["train_loss"] for h in cached["history"]]
        losses_o = [h["train_loss"] for h in online["history"]]
        np.testing.assert_allclose(losses_c, losses_o, rtol=1e-4)


def test_method_aux_builds_kmeans_and_oracle_artifacts(finished_run):
    """The pipeline's fits for clustering methods: per-class k-means on the teacher's train
    embeddings, and the oracle's fine-label slots (digits: 5 digits per parity class)."""
    from lelp_jax.methods import Method

    wd = finished_run["workdir"]
    config = load_config(CONFIG, [a for a in finished_run["base"] if a.startswith("--config.")])
    run = pipeline.Run(config, wd)

    def fake(fit):
        return Method(name=f"fake_{fit}", needs_teacher=True, parse_options=lambda config: None,
                      loss=lambda inputs, options: 0.0, head_outputs=lambda c, _: c,
                      class_log_probs=lambda r, c: r, fit=fit)

    km = pipeline.method_aux(fake("kmeans"), run)
    assert km.centroids.shape == (2, 5, 256)
    source, _ = run.split("train")
    labels = np.asarray([source[i]["label"] for i in range(len(source))])
    np.testing.assert_array_equal(np.asarray(km.count), np.bincount(labels, minlength=2))
    slots = pipeline.method_aux(fake("oracle"), run)
    fine = np.asarray([source[i]["fine_label"] for i in range(len(source))])
    assert slots.num_subclasses == 5
    np.testing.assert_array_equal(np.asarray(slots.class_of_fine)[fine], labels)
    with pytest.raises(ValueError, match="does not build"):
        pipeline.method_aux(fake("mystery"), run)
    # lelp_kmeans: S = 5 centroids in each class's top-8 null-space principal subspace of the teacher's W
    from lelp_jax import train
    from lelp_jax.methods import get_method
    from lelp_jax.models import head_weights

    sk = pipeline.method_aux(get_method("lelp_kmeans"), run)
    assert sk.subspace.directions.shape == (2, 256, 8) and sk.clusters.centroids.shape == (2, 5, 8)
    w = np.asarray(head_weights(train.load_variables(str(wd / "teacher"), which="best"))[0], np.float64)
    v = np.asarray(sk.subspace.directions, np.float64)
    assert np.abs(np.einsum("cd,kdj->ckj", w, v)).max() < 1e-3 * np.abs(w).max() * np.sqrt(256)
    too_big = load_config(CONFIG, [a for a in finished_run["base"] if a.startswith("--config.")]
                          + ["--config.lelp_kmeans.subspace_dim=255"])
    with pytest.raises(pipeline.ConfigError, match=r"lelp_kmeans.subspace_dim=255 exceeds .*D - C = 254"):
        pipeline.method_aux(get_method("lelp_kmeans"), pipeline.Run(too_big, wd))


def test_target_entropy_calibrates_every_splitting_fit_on_the_train_split(finished_run):
    """With lelp.target_entropy the pipeline solves one beta per class on the teacher's train embeddings
    (fit labels): each class's mean normalised split entropy is the target, for LELP and for k-means."""
    from lelp_jax.methods import get_method
    from lelp_jax.core.projections import load_projections
    from lelp_jax.core.sharpness import normalized_entropy

    wd = finished_run["workdir"]
    config = load_config(CONFIG, [a for a in finished_run["base"] if a.startswith("--config.")]
                         + ["--config.lelp.target_entropy=0.6"])
    run = pipeline.Run(config, wd)
    emb, _ = run.train_outputs
    source, _ = run.split("train")
    labels = np.asarray([source[i]["label"] for i in range(len(source))])
    lelp = get_method("lelp")
    fits = {"lelp": pipeline.calibrate(lelp, load_projections(wd / "projections.npz"), run),
            "kmeans": pipeline.method_aux(get_method("kmeans"), run)}
    for name, fit in fits.items():
        assert fit.betas is not None and fit.betas.shape == (2,), name
        method = get_method(name)
        split = np.asarray(method.split(fit, emb, {"label": labels}, method.parse_options(config)), np.float64)
        for k in range(2):
            assert abs(normalized_entropy(split[labels == k, k]).mean() - 0.6) < 0.01, (name, k)


def test_fill_missing_only_adds_new_keys_at_their_defaults():
    defaults = {"kd": {"tau": 2.0, "student_tau": None}, "teacher": {"model_kwargs": {"hidden": [256]}}}
    stored = {"kd": {"tau": 2.0}, "teacher": {"model_kwargs": {"num_layers": 6}}}
    same = {"kd": {"tau": 2.0, "student_tau": None}, "teacher": {"model_kwargs": {"num_layers": 6}}}
    assert pipeline.workdir._fill_missing(stored, same, defaults) == same  # new key at its default: filled
    changed = {"kd": {"tau": 2.0, "student_tau": 1.0}, "teacher": {"model_kwargs": {"num_layers": 6}}}
    assert pipeline.workdir._fill_missing(stored, changed, defaults) == stored  # set otherwise: stays missing


def test_workdirs_loading_one_teacher_share_its_derived_artifacts(finished_run, tmp_path, env_dirs, monkeypatch):
    """Student-side keys (beta, alpha) share the teacher's record, statistics and projections by
    content-addressed links; a fit key (S) gets its own projections; other data re-evaluates the teacher."""
    src = finished_run["workdir"]
    evaluated = []
    real = pipeline.stages.evaluate_split

    def counting(*a, **k):
        evaluated.append(1)
        return real(*a, **k)

    monkeypatch.setattr(pipeline.stages, "evaluate_split", counting)

    def fit(name, *extra):
        wd = tmp_path / name
        args = smoke_args(wd, env_dirs["data_dir"])
        assert cli.main(["fit", *args, f"--config.teacher.checkpoint={src}", "--methods", "lelp", *extra]) == 0
        return wd

    derived = src / "teacher" / "derived"
    stored = len(list(derived.glob("projections-*.npz")))
    a = fit("beta3", "--config.lelp.beta=3")
    b = fit("beta05", "--config.lelp.beta=0.5", "--config.lelp.alpha=0.5")
    assert evaluated == []  # the loaded teacher's teacher.json already held its accuracy on this data
    trained = json.loads((src / "teacher" / "teacher.json").read_text())
    loaded = json.loads((a / "teacher" / "teacher.json").read_text())
    assert loaded["test_accuracy"] == trained["test_accuracy"] and loaded["evaluated"] is False
    for name in ("statistics.npz", "projections.npz"):
        assert os.path.samefile(a / name, b / name) and os.path.samefile(a / name, src / name)
    assert len(list(derived.glob("projections-*.npz"))) == stored  # nothing new was fitted
    s3 = fit("s3", "--config.lelp.num_subclasses=3")
    assert os.path.samefile(s3 / "statistics.npz", a / "statistics.npz")
    assert not os.path.samefile(s3 / "projections.npz", a / "projections.npz")
    assert len(list(derived.glob("projections-*.npz"))) == stored + 1
    other = fit("other_data", "--config.data.max_examples_per_split=128")
    assert len(evaluated) == 2  # test and validation: another data section is measured again
    assert not os.path.samefile(other / "statistics.npz", a / "statistics.npz")


def test_workdir_layout_names_every_path_and_force_deletes_its_top_level(tmp_path):
    """Every path ``Workdir`` gives lies in a row of ``Workdir.layout()`` (the rows the docs show), each row says
    what it holds, and ``--force`` deletes exactly the layout's top-level entries."""
    import fnmatch
    import re

    wd = pipeline.Workdir(tmp_path)
    rows = [re.sub(r"[A-Z]+(-[A-Z]+)?", "*", path).rstrip("/") for path, _ in pipeline.Workdir.layout()]
    assert all(what for _, what in pipeline.Workdir.layout())
    for path in (wd.config_json, wd.teacher_dir, wd.teacher_json, wd.teacher_outputs("train"), wd.statistics,
                 wd.projections(), wd.projections("pca"), wd.run_dir("kd", 0), wd.run_result("kd", 0), wd.results):
        rel = path.relative_to(tmp_path).as_posix()
        assert any(fnmatch.fnmatch(rel, r) or fnmatch.fnmatch(rel, r + "/*") for r in rows), rel
    assert set(pipeline.Workdir.artifact_globs()) == {
        "config.json", "teacher", "teacher_outputs", "statistics.npz", "projections.npz", "projections_*.npz",
        "runs", "results.json", "subclass_teacher"}


def test_register_fit_makes_a_new_kind_one_registration(rng):
    """A kind registered with ``register_fit`` is what ``build_fit`` gives a method of that kind (here class means of
    the teacher embeddings vs float64 NumPy); a kind is registered once; an unknown kind names the fix."""
    from lelp_jax.config import base_config
    from lelp_jax.methods import Method

    emb = rng.normal(size=(60, 5)).astype(np.float32)
    labels = rng.integers(0, 3, size=60)
    inputs = pipeline.FitInputs(config=base_config(), num_classes=3, num_fine_classes=None,
                                outputs=lambda: (emb, None), labels=lambda: (labels, None),
                                head_weights=None, moments=None, trained_teacher=None)

    def means(method, inputs):
        e, _ = inputs.outputs()
        return np.stack([e[inputs.labels()[0] == c].mean(0) for c in range(inputs.num_classes)])

    method = Method(name="means", needs_teacher=True, parse_options=lambda config: None,
                    loss=lambda inputs, options: 0.0, head_outputs=lambda c, _: c, class_log_probs=lambda r, c: r,
                    fit="test_class_means")
    with pytest.raises(ValueError, match=r"register_fit\('test_class_means', fn\)"):
        pipeline.build_fit(method, inputs)
    pipeline.register_fit("test_class_means", means)
    try:
        ref = np.stack([emb[labels == c].astype(np.float64).mean(0) for c in range(3)])
        np.testing.assert_allclose(pipeline.build_fit(method, inputs), ref, rtol=1e-6, atol=1e-6)
        with pytest.raises(ValueError, match="already registered"):
            pipeline.register_fit("test_class_means", means)
    finally:
        del pipeline.FITS["test_class_means"]
