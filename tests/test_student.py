"""Shipping the student (#20): what a run records, the bundle's round trip, `lelp export` chosen on
validation, `lelp predict` in a fresh process in another folder (features with string labels, and a
text student with its tokenizer), `load_student`, and every bad input as one `lelp: error:` line."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from lelp_jax import cli
from lelp_jax.student import bundle, export

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
NAMES = np.array(["cat", "dog"])


@pytest.fixture(autouse=True)
def no_compilation_cache(monkeypatch):
    monkeypatch.setenv("LELP_JAX_CACHE_DIR", "off")


def _npz_data(folder: Path, seed: int) -> None:
    """Two classes in 12 features, string labels (cat/dog), fresh random draws."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", 320), ("test", 150)):
        y = rng.integers(0, 2, n)
        x = rng.normal(size=(n, 12)).astype(np.float32) + 0.9 * y[:, None]
        np.savez(folder / f"{split}.npz", features=x, labels=NAMES[y])


@pytest.fixture(scope="module")
def features_run(tmp_path_factory):
    """`lelp run` (ce and lelp, seeds 0 and 1, 60 steps each) on .npz features with string labels: the
    workdir, its data folder and what the run printed."""
    root = tmp_path_factory.mktemp("features_run")
    _npz_data(root, int(np.random.SeedSequence().entropy % 2**31))
    wd = root / "wd"
    argv = ["run", "--config", str(ROOT / "configs" / "synthetic_subclasses.py"), "--workdir", str(wd),
            "--config.data.name=local", f"--config.data.files.train={root}/train.npz",
            f"--config.data.files.test={root}/test.npz", "--config.data.eval_batch_size=64",
            "--config.teacher.train.num_steps=60", "--config.teacher.train.eval_every=20",
            "--config.train.num_steps=60", "--config.train.eval_every=20", "--config.train.checkpoint_every=60",
            "--config.lelp.num_subclasses=2", "--methods", "ce,lelp", "--seeds", "0,1"]
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert cli.main(argv) == 0
    return wd, root, buf.getvalue()


def _fresh_process(argv, cwd):
    """`lelp ARGV` in a new Python process in ``cwd`` (this checkout on the path, nothing else)."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
    env["PYTHONPATH"] = str(ROOT)
    code = "import sys; from lelp_jax.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _accuracy(preds_csv: Path, labels) -> float:
    rows = list(csv.DictReader(preds_csv.open()))
    assert len(rows) == len(labels)
    return float(np.mean([r["label"] == str(y) for r, y in zip(rows, labels)]))


def test_run_records_the_student_and_exports_the_best_on_validation(features_run):
    wd, _, out = features_run
    results = json.loads((wd / "results.json").read_text())
    for r in results["runs"]:
        rec = r["student"]
        assert rec["class_names"] == ["cat", "dog"] and rec["num_classes"] == 2
        assert rec["num_subclasses"] == (2 if r["method"] == "lelp" else 1)
        assert rec["model"] == {"name": "mlp", "kwargs": {"hidden": [8]}}
        assert rec["input"] == {"kind": "features", "keys": ["features"], "shape": [12], "frozen_encoder": ""}
        assert rec["method"] == r["method"] and rec["examples"]["test"] == 150
    best = max(results["runs"], key=lambda r: (r["best_val_accuracy"], -["ce", "lelp"].index(r["method"]),
                                               -r["seed"]))
    spec = json.loads((wd / "student" / "student.json").read_text())
    assert (spec["run"]["method"], spec["run"]["seed"]) == (best["method"], best["seed"])
    assert spec["format_version"] == bundle.FORMAT_VERSION and spec["versions"]["jax"] == jax.__version__
    assert "cpu" in spec["exported"]["platforms"]
    line = f"[export] {best['method']}/seed_{best['seed']} (validation {100 * best['best_val_accuracy']:.1f} %)"
    assert line in out and f"lelp predict --student {wd / 'student'}" in out


def test_bundle_round_trip_variables_and_exported_function(features_run, rng):
    from lelp_jax import train

    wd, root, _ = features_run
    s = bundle.load_student(wd / "student")
    run_dir = wd / "runs" / s.spec["run"]["method"] / f"seed_{s.spec['run']['seed']}"
    want = train.load_variables(str(run_dir), which="best")
    flat_got = jax.tree_util.tree_leaves_with_path(s.variables)
    flat_want = dict(jax.tree_util.tree_leaves_with_path({k: v for k, v in want.items() if v}))
    assert len(flat_got) == len(flat_want)
    for path, leaf in flat_got:
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat_want[path]))  # bit-exact
    x = rng.normal(size=(37, 12)).astype(np.float32)
    _, logits = s.model.apply(want, {"features": x}, train=False)
    r = np.asarray(logits, np.float64).reshape(37, 2, -1)  # float64 reference: logsumexp_s, then softmax_c
    m = r.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(r - m).sum(-1, keepdims=True)))[..., 0]
    ref = np.exp(lse - lse.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(s.predict_proba(x), ref, atol=1e-6)
    exported = jax.export.deserialize(bytearray((wd / "student" / bundle.EXPORTED).read_bytes()))
    for n in (1, 37):  # the batch dimension is symbolic
        np.testing.assert_allclose(np.asarray(exported.call(x[:n])), ref[:n], atol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.jit(s.apply)(s.variables, {"features": x})), ref, atol=1e-6)
    assert s.predict(x) == [s.class_names[i] for i in ref.argmax(-1)]


def test_predict_in_a_fresh_process_reproduces_the_test_accuracy(features_run, tmp_path):
    wd, root, _ = features_run
    spec = json.loads((wd / "student" / "student.json").read_text())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = _fresh_process(["predict", "--student", str(wd / "student"), "--input", str(root / "test.npz"),
                           "--out", "preds.csv", "--batch-size", "64"], elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert "[predict] 64/150 rows" in proc.stderr and "[predict] 150/150 rows" in proc.stderr
    labels = np.load(root / "test.npz")["labels"]
    assert _accuracy(elsewhere / "preds.csv", labels) == spec["run"]["test_accuracy_best_val"]
    rows = list(csv.DictReader((elsewhere / "preds.csv").open()))
    assert list(rows[0]) == ["row", "label", "label_id", "p_cat", "p_dog"]
    p = np.array([[float(r["p_cat"]), float(r["p_dog"])] for r in rows])
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    assert [NAMES[int(r["label_id"])] for r in rows] == [r["label"] for r in rows]


def test_export_chooses_on_validation_and_cards_the_paired_difference(features_run, tmp_path):
    wd, _, _ = features_run
    runs = [json.loads(p.read_text()) for p in sorted(wd.glob("runs/*/seed_*/result.json"))]
    out, chosen = export.export_student(wd, method="lelp", out=tmp_path / "b")
    lelp = [r for r in runs if r["method"] == "lelp"]
    assert chosen["best_val_accuracy"] == max(r["best_val_accuracy"] for r in lelp)
    card = json.loads((out / "card.json").read_text())
    by = {(r["method"], r["seed"]): r["test_accuracy_best_val"] for r in runs}
    d = np.array([by["lelp", s] - by["ce", s] for s in (0, 1)], np.float64)
    half = 12.706204736174707 * d.std(ddof=1) / np.sqrt(2)  # t_{0.975, 1}
    got = card["paired_test_difference"]["ce"]
    np.testing.assert_allclose([got["mean"], got["low"], got["high"]], [d.mean(), d.mean() - half, d.mean() + half],
                               rtol=1e-9, atol=1e-12)
    assert "kd" not in card["paired_test_difference"] and card["method"] == "lelp"
    assert "paired test difference to ce" in (out / "card.md").read_text()
    out, chosen = export.export_student(wd, method="ce", seed=1, out=tmp_path / "b")  # replaces the bundle
    assert (chosen["method"], chosen["seed"]) == ("ce", 1)
    assert json.loads((out / "student.json").read_text())["run"]["seed"] == 1


def test_choose_run_never_looks_at_test(tmp_path):
    wd = tmp_path / "wd"
    for (m, s), (val, test) in {("ce", 0): (0.90, 0.99), ("lelp", 0): (0.95, 0.50), ("lelp", 1): (0.95, 0.40)}.items():
        (wd / "runs" / m / f"seed_{s}").mkdir(parents=True)
        (wd / "runs" / m / f"seed_{s}" / "result.json").write_text(json.dumps(
            {"method": m, "seed": s, "best_val_accuracy": val, "test_accuracy_best_val": test}))
    (wd / "config.json").write_text(json.dumps({"methods": ["ce", "lelp"]}))
    assert (export.choose_run(wd)["method"], export.choose_run(wd)["seed"]) == ("lelp", 0)  # tie: lower seed
    assert export.choose_run(wd, method="ce")["seed"] == 0
    assert export.choose_run(wd, seed=1)["method"] == "lelp"


def test_text_student_round_trips_label_names_in_a_fresh_process(tmp_path):
    """configs/text_csv.py on CSV files labelled negative/positive: the bundle carries the tokenizer and
    the class names, and `lelp predict` in another folder reproduces the recorded test accuracy."""
    wd = tmp_path / "wd"
    argv = ["run", "--config", str(ROOT / "configs" / "text_csv.py"), "--workdir", str(wd), "--config.smoke=true",
            "--methods", "lelp", f"--config.data.files.train={DATA}/reviews_train.csv",
            f"--config.data.files.test={DATA}/reviews_test.csv", "--config.teacher.model=text_transformer",
            "--config.teacher.pretrained=none", "--config.teacher.model_kwargs.d_model=16",
            "--config.teacher.model_kwargs.num_layers=1", "--config.teacher.model_kwargs.num_heads=2",
            "--config.teacher.train.num_steps=20", "--config.train.num_steps=30", "--config.lelp.num_subclasses=2"]
    assert cli.main(argv) == 0
    out = wd / "student"
    spec = json.loads((out / "student.json").read_text())
    assert spec["class_names"] == ["negative", "positive"]
    assert spec["input"]["tokenizer"] == "tokenizer.json" and (out / "tokenizer.json").is_file()
    assert spec["input"]["bucket_lengths"] == [16, 32, 64] and spec["input"]["max_length"] == 64
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = _fresh_process(["predict", "--student", str(out), "--input", str(DATA / "reviews_test.csv")], elsewhere)
    assert proc.returncode == 0, proc.stderr
    labels = [r["label"] for r in csv.DictReader((DATA / "reviews_test.csv").open())]
    assert _accuracy(elsewhere / "predictions.csv", labels) == spec["run"]["test_accuracy_best_val"]
    s = bundle.load_student(out)
    texts = [r["text"] for r in csv.DictReader((DATA / "reviews_test.csv").open())]
    got = [r["label"] for r in csv.DictReader((elsewhere / "predictions.csv").open())]
    assert s.predict(texts) == got and set(got) <= {"negative", "positive"}
    ids = s.tokenizer.encode(texts[0]).ids
    x = np.asarray([ids], np.int32)
    np.testing.assert_allclose(np.asarray(s.exported.call(x, np.ones_like(x))), s.predict_proba(texts[:1]), atol=1e-6)


def _error(argv, capsys):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lelp: error: "), err
    return lines[0]


def test_every_bad_input_is_one_error_line(features_run, tmp_path, capsys, rng):
    wd, root, _ = features_run
    student = str(wd / "student")
    np.savez(tmp_path / "wide.npz", features=rng.normal(size=(4, 13)).astype(np.float32))
    assert "of shape (N, 12); got (4, 13)" in _error(
        ["predict", "--student", student, "--input", str(tmp_path / "wide.npz")], capsys)
    np.savez(tmp_path / "nokey.npz", x=np.zeros((2, 12), np.float32))
    assert "needs the array 'features'" in _error(
        ["predict", "--student", student, "--input", str(tmp_path / "nokey.npz")], capsys)
    np.savez(tmp_path / "empty.npz", features=np.zeros((0, 12), np.float32))
    assert "has no rows" in _error(["predict", "--student", student, "--input", str(tmp_path / "empty.npz")], capsys)
    (tmp_path / "x.csv").write_text("text\nhello\n")
    assert "from an .npz file" in _error(["predict", "--student", student, "--input", str(tmp_path / "x.csv")], capsys)
    assert "does not exist" in _error(["predict", "--student", student, "--input", str(tmp_path / "nope.npz")], capsys)
    assert "is not a student bundle" in _error(
        ["predict", "--student", str(tmp_path), "--input", str(root / "test.npz")], capsys)
    assert "no finished student run" in _error(["export", str(tmp_path)], capsys)
    assert "no finished run of kd" in _error(["export", str(wd), "--method", "kd"], capsys)
    assert "workdir" in _error(["export", str(tmp_path / "missing")], capsys)


def test_text_inputs_bad_files(tmp_path):
    """A text student's bad inputs: a missing column, an empty file (checked on a stub spec: no training)."""
    from lelp_jax.runtime.errors import ConfigError
    from lelp_jax.student import predict

    s = bundle.Student(directory=tmp_path, spec={"class_names": ["a", "b"], "input": {"kind": "text",
                       "text_column": "text"}}, variables=None, model=None, apply=None)
    (tmp_path / "cols.csv").write_text("review,label\ngood,a\n")
    with pytest.raises(ConfigError, match="missing text column 'text'.*--text-column"):
        predict.read_inputs(s, str(tmp_path / "cols.csv"))
    assert predict.read_inputs(s, str(tmp_path / "cols.csv"), text_column="review") == ["good"]
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="the file is empty"):
        predict.read_inputs(s, str(tmp_path / "empty.csv"))
    (tmp_path / "x.npz").write_bytes(b"")
    with pytest.raises(ConfigError, match="reads .csv or .jsonl"):
        predict.read_inputs(s, str(tmp_path / "x.npz"))
