"""teacher.model='precomputed': a teacher's exported outputs run every output-only method like the teacher itself."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from lelp_jax import cli, pipeline
from lelp_jax.config import load_config
from lelp_jax.pipeline.precomputed import PrecomputedError, SplitRows, load_precomputed_teacher, read_arrays

CONFIG = "configs/digits_binary.py"
METHODS = "ce,kd,lelp,kmeans"
_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "export_teacher_outputs.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("export_teacher_outputs", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


export = _load_script()


def smoke(workdir):
    return ["--config", CONFIG, "--workdir", str(workdir), "--config.smoke=true",
            "--config.teacher.train.num_steps=40", "--config.train.num_steps=20",
            "--config.train.checkpoint_every=0", "--config.teacher.train.checkpoint_every=0"]


def run_cli(argv, capsys):
    rc = cli.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def numpy_mlp(params):
    """The digits teacher (MLP: dense_i + ReLU, then head) as a pure NumPy function: image -> (h, logits)."""
    p = {k: {n: np.asarray(a, np.float64) for n, a in v.items()} for k, v in params.items()}
    hidden = sorted((k for k in p if k.startswith("dense_")), key=lambda k: int(k.split("_")[1]))

    def fn(images):
        h = np.asarray(images, np.float64).reshape(len(images), -1)
        for k in hidden:
            h = np.maximum(h @ p[k]["kernel"] + p[k]["bias"], 0.0)
        return h, h @ p["head"]["kernel"] + p["head"]["bias"]

    return fn


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The in-framework run (ce, kd, lelp, kmeans), and its teacher exported with NumPy.

    Layouts: train as a folder of .npy (memory-mapped) without the head, the head in
    its own .npz, validation and test as .npz (test with labels).
    """
    root = tmp_path_factory.mktemp("precomputed")
    ref = root / "reference"
    assert cli.main(["run", *smoke(ref), "--methods", METHODS]) == 0
    from lelp_jax import train

    config = load_config(CONFIG, [a for a in smoke(ref) if a.startswith("--config.")])
    params = train.load_variables(str(ref / "teacher"), which="best")["params"]
    fn = numpy_mlp(params)
    run = pipeline.Run(config, ref)
    out = root / "outputs"
    arrays = {}
    for split in ("train", "validation", "test"):
        source, _ = run.split(split)
        rows = [source[i] for i in range(len(source))]
        images = np.stack([r["image"] for r in rows])
        labels = np.asarray([r["label"] for r in rows])
        path = out / split if split == "train" else out / f"{split}.npz"
        batches = [images[i:i + 100] for i in range(0, len(images), 100)]
        export.export_numpy(fn, batches, path, labels=labels if split == "test" else None,
                            num_rows=len(images) if split == "train" else None)
        arrays[split] = (*fn(images), labels)
    head = {k: np.asarray(v) for k, v in params["head"].items()}
    export.write_outputs(out / "head.npz", kernel=head["kernel"], bias=head["bias"])
    flags = ["--config.teacher.model=precomputed", f"--config.teacher.outputs.train={out / 'train'}",
             f"--config.teacher.outputs.validation={out / 'validation.npz'}",
             f"--config.teacher.outputs.test={out / 'test.npz'}", f"--config.teacher.outputs.head={out / 'head.npz'}"]
    return {"root": root, "ref": ref, "out": out, "flags": flags, "arrays": arrays, "head": head}


def test_precomputed_run_matches_the_in_framework_teacher(exported, capsys):
    wd = exported["root"] / "precomputed_run"
    rc, out, err = run_cli(["run", *smoke(wd), *exported["flags"], "--methods", METHODS], capsys)
    assert rc == 0, err
    assert "[teacher_outputs] not needed (precomputed teacher" in out
    assert isinstance(read_arrays(exported["out"] / "train", key="train")["embedding"], np.memmap)

    ref, new = exported["ref"], wd
    t_ref = json.loads((ref / "teacher" / "teacher.json").read_text())
    t_new = json.loads((new / "teacher" / "teacher.json").read_text())
    assert t_new["source"] == "precomputed" and t_new["params"] is None
    for split, key in (("test", "test_accuracy"), ("validation", "val_accuracy")):
        emb, logits, labels = exported["arrays"][split]
        assert t_new[key] == pytest.approx(float(np.mean(np.argmax(logits, -1) == labels)), abs=1e-12)
        assert abs(t_new[key] - t_ref[key]) <= 1.0 / len(labels) + 1e-12  # a float tie may flip one example

    with np.load(ref / "statistics.npz") as a, np.load(new / "statistics.npz") as b:
        np.testing.assert_array_equal(a["count"], b["count"])
        np.testing.assert_allclose(b["mean"], a["mean"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(b["m2"], a["m2"], rtol=1e-4, atol=1e-3)
        assert json.loads(str(b["metadata"]))["teacher"] == f"precomputed@{(exported['out'] / 'train').resolve()}"
    with np.load(ref / "projections.npz") as a, np.load(new / "projections.npz") as b:
        np.testing.assert_allclose(b["eigenvalues"], a["eigenvalues"], rtol=1e-3, atol=1e-5)

    for method in METHODS.split(","):
        r_ref = json.loads((ref / "runs" / method / "seed_0" / "result.json").read_text())
        r_new = json.loads((new / "runs" / method / "seed_0" / "result.json").read_text())
        np.testing.assert_allclose([h["train_loss"] for h in r_new["history"]],
                                   [h["train_loss"] for h in r_ref["history"]], rtol=1e-4, atol=1e-6)
        n_test = len(exported["arrays"]["test"][2])
        for key in ("test_accuracy_best_val", "test_accuracy_last"):
            assert abs(r_new[key] - r_ref[key]) <= 1.0 / n_test + 1e-12, (method, key)


def _drop_last_row(arrays, head):
    arrays["embedding"], arrays["logits"] = arrays["embedding"][:-1], arrays["logits"][:-1]


def _other_head(arrays, head):  # another teacher's head: a column permutation plus noise
    head["kernel"] = head["kernel"][:, ::-1] + 0.1
    head["bias"] = head["bias"][::-1]


def _nan(arrays, head):
    arrays["embedding"][7, 3] = np.nan


@pytest.mark.parametrize("edit,message", [
    (_drop_last_row, "'embedding' has 255 rows but the data's train split has 256 examples"),
    (_other_head, "the head does not belong to these embeddings"),
    (_nan, "'embedding' row 7 holds NaN or inf"),
], ids=["rows", "head", "nan"])
def test_bad_exports_stop_with_one_error_line_before_anything_is_written(exported, tmp_path, capsys, edit, message):
    """Mismatched rows, a wrong head, a NaN: one `lelp: error:` line naming the file, and no workdir."""
    emb, logits, _ = exported["arrays"]["train"]
    arrays = {"embedding": emb.astype(np.float32), "logits": logits.astype(np.float32)}
    head = dict(exported["head"])
    edit(arrays, head)
    export.write_outputs(tmp_path / "bad_train.npz", **arrays, **head)
    flags = [f for f in exported["flags"] if not f.startswith(("--config.teacher.outputs.train=",
                                                               "--config.teacher.outputs.head="))]
    flags.append(f"--config.teacher.outputs.train={tmp_path / 'bad_train.npz'}")
    wd = tmp_path / "w"
    rc, _, err = run_cli(["run", *smoke(wd), *flags, "--methods", METHODS], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lelp: error: teacher.outputs.train=") and message in lines[0]
    assert not wd.exists()


def test_methods_that_need_the_network_stop_before_anything_runs(exported, tmp_path, capsys):
    wd = tmp_path / "w"
    rc, _, err = run_cli(["run", *smoke(wd), *exported["flags"], "--methods", "ce,subclass"], capsys)
    assert rc == 2 and "method 'subclass' cannot run with teacher.model='precomputed'" in err
    assert len(err.strip().splitlines()) == 1 and not wd.exists()
    rc, _, err = run_cli(["run", *smoke(wd), "--config.teacher.model=precomputed"], capsys)
    assert rc == 2 and "needs teacher.outputs.train" in err and not wd.exists()
    no_val = [f for f in exported["flags"] if not f.startswith("--config.teacher.outputs.validation=")]
    rc, _, err = run_cli(["run", *smoke(wd), *no_val], capsys)
    assert rc == 2 and "needs teacher.outputs.validation" in err and not wd.exists()


# ----------------------------------------------------------------------------- the loader on fresh arrays


def _outputs(rng, n, d, c, *, noise=0.0):
    emb = rng.normal(size=(n, d)).astype(np.float32)
    kernel = rng.normal(size=(d, c)).astype(np.float32)
    bias = rng.normal(size=c).astype(np.float32)
    logits = (emb.astype(np.float64) @ kernel + bias + noise).astype(np.float32)
    return emb, logits, kernel, bias


def _load(tmp_path, splits, *, labels_of=None, tolerance=1e-2, **files):
    outputs = {"tolerance": tolerance, "train": None, "validation": None, "test": None, "head": None}
    for key, arrays in files.items():
        outputs[key] = str(export.write_outputs(tmp_path / key, **arrays))
    return load_precomputed_teacher(outputs, splits=splits, num_classes=3,
                                    labels_of=labels_of or (lambda s: pytest.fail("labels not needed")))


def test_carved_splits_read_their_rows_of_the_train_file(rng, tmp_path):
    """Validation carved from train: each split's cache row i is the train file's row rows[i]."""
    emb, logits, kernel, bias = _outputs(rng, 50, 6, 3)
    perm = rng.permutation(50)
    splits = {"train": SplitRows("train", 50, np.sort(perm[10:])),
              "validation": SplitRows("train", 50, np.sort(perm[:10])), "test": SplitRows("test", 20)}
    t_emb, t_logits, _, _ = _outputs(rng, 20, 6, 3)
    t_logits = (t_emb.astype(np.float64) @ kernel + bias).astype(np.float32)
    teacher = _load(tmp_path, splits, train=dict(embedding=emb, logits=logits, kernel=kernel, bias=bias),
                    test=dict(embedding=t_emb, logits=t_logits))
    for name in ("train", "validation"):
        rows = splits[name].rows
        index = rng.integers(0, len(rows), size=7)
        got_e, got_l = teacher.caches[name].lookup(index)
        np.testing.assert_array_equal(got_e, emb[rows[index]])
        np.testing.assert_array_equal(got_l, logits[rows[index]])
        np.testing.assert_array_equal(np.asarray(teacher.caches[name].embeddings), emb[rows])
    labels = rng.integers(0, 3, size=20)
    assert teacher.accuracy("test", labels) == pytest.approx(np.mean(np.argmax(t_logits, -1) == labels))
    w, b = teacher.head_weights()
    np.testing.assert_array_equal(w, kernel.T)
    np.testing.assert_array_equal(b, bias)
    with pytest.raises(PrecomputedError, match="no validation split of its own .* unset it"):
        _load(tmp_path / "stray", splits, train=dict(embedding=emb, logits=logits, kernel=kernel, bias=bias),
              test=dict(embedding=t_emb, logits=t_logits), validation=dict(embedding=emb, logits=logits))


def test_float32_folder_is_memory_mapped_and_never_copied(rng, tmp_path):
    """A folder of float32 .npy: the cache's whole-array view and its rows read the file's pages."""
    emb, logits, kernel, bias = _outputs(rng, 64, 5, 3)
    teacher = _load(tmp_path, {"train": SplitRows("train", 64)},
                    train=dict(embedding=emb, logits=logits, kernel=kernel, bias=bias))
    whole = np.asarray(teacher.caches["train"].embeddings)
    mapped = read_arrays(tmp_path / "train", key="train")["embedding"]
    assert isinstance(mapped, np.memmap)
    assert isinstance(whole.base, np.memmap) or isinstance(whole, np.memmap)
    np.testing.assert_array_equal(whole, emb)
    index = rng.integers(0, 64, size=9)
    np.testing.assert_array_equal(teacher.caches["train"].lookup(index)[0], emb[index])


def test_head_tolerance_is_relative_to_the_logit(rng, tmp_path):
    """|l - (h K + b)| <= tol (1 + |l|): an offset just inside passes, just outside names the row."""
    emb, logits, kernel, bias = _outputs(rng, 40, 5, 3)
    ref = emb.astype(np.float64) @ kernel.astype(np.float64) + bias.astype(np.float64)
    row = int(rng.integers(0, 40))
    splits = {"train": SplitRows("train", 40)}
    tol = 1e-2
    for factor, ok in ((0.5, True), (2.0, False)):
        bad = ref.copy()
        bad[row, 1] += factor * tol * (1 + abs(ref[row, 1]))
        arrays = dict(embedding=emb, logits=bad.astype(np.float64), kernel=kernel, bias=bias)
        if ok:
            _load(tmp_path / str(factor), splits, tolerance=tol, train=arrays)
        else:
            with pytest.raises(PrecomputedError, match=f"'logits' row {row} differs"):
                _load(tmp_path / str(factor), splits, tolerance=tol, train=arrays)


def test_shape_label_and_head_errors_name_the_array_and_the_fix(rng, tmp_path):
    emb, logits, kernel, bias = _outputs(rng, 30, 4, 3)
    splits = {"train": SplitRows("train", 30)}
    with pytest.raises(PrecomputedError, match=r"'embedding' is \(30, 4\) but the head's 'kernel' is \(5, 3\)"):
        _load(tmp_path / "d", splits, train=dict(embedding=emb, logits=logits, kernel=np.zeros((5, 3)), bias=bias))
    with pytest.raises(PrecomputedError, match=r"has no 'logits' array"):
        path = tmp_path / "nologits.npz"
        np.savez(path, embedding=emb, kernel=kernel, bias=bias)
        load_precomputed_teacher({"train": str(path), "tolerance": 1e-2}, splits=splits, num_classes=3,
                                 labels_of=None)
    with pytest.raises(PrecomputedError, match="the teacher has 3 classes .* but the data has 2"):
        path = tmp_path / "c.npz"
        np.savez(path, embedding=emb, logits=logits, kernel=kernel, bias=bias)
        load_precomputed_teacher({"train": str(path), "tolerance": 1e-2}, splits=splits, num_classes=2,
                                 labels_of=None)
    data_labels = rng.integers(0, 3, size=30)
    shuffled = data_labels.copy()
    r = int(rng.integers(0, 30))
    shuffled[r] = (shuffled[r] + 1) % 3
    with pytest.raises(PrecomputedError, match=f"'label' row {r} is .* rows are in another order"):
        _load(tmp_path / "l", splits, labels_of=lambda s: data_labels,
              train=dict(embedding=emb, logits=logits, kernel=kernel, bias=bias, label=shuffled))
    out_of_range = data_labels.copy()
    out_of_range[r] = 3
    with pytest.raises(PrecomputedError, match=f"'label' row {r} is 3, outside \\[0, 3\\)"):
        _load(tmp_path / "r", splits, labels_of=lambda s: data_labels,
              train=dict(embedding=emb, logits=logits, kernel=kernel, bias=bias, label=out_of_range))
    logits_inf = logits.copy()
    logits_inf[r, 2] = np.inf
    with pytest.raises(PrecomputedError, match=f"'logits' row {r} holds NaN or inf"):
        _load(tmp_path / "i", splits, train=dict(embedding=emb, logits=logits_inf, kernel=kernel, bias=bias))


def test_torch_export_round_trips_through_the_loader(rng, tmp_path):
    """A torch model's head input/output captured by the hook pass the loader's head check."""
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    x = torch.tensor(rng.normal(size=(40, 7)), dtype=torch.float32)
    path = export.export_torch(model, model[2], [x[:16], x[16:]], tmp_path / "train", num_rows=40)
    teacher = load_precomputed_teacher({"train": str(path), "tolerance": 1e-4},
                                       splits={"train": SplitRows("train", 40)}, num_classes=3, labels_of=None)
    with torch.no_grad():
        ref = model(x).double().numpy()
    np.testing.assert_allclose(np.asarray(teacher.caches["train"].logits), ref, rtol=1e-6, atol=1e-6)


def test_local_data_with_carved_validation_maps_each_split_to_its_rows_of_the_train_file(rng, tmp_path):
    """Your own files without a validation file: teacher.outputs.train covers the whole train file,
    and the carved train/validation splits read their own rows of it (checked by recomputing the
    NumPy teacher on each split's features), its `label` checked against the data's labels."""
    a = rng.normal(size=(6, 5))
    kernel, bias = rng.normal(size=(5, 3)), rng.normal(size=3)

    def teacher(x):
        h = np.tanh(np.asarray(x, np.float64) @ a)
        return h, h @ kernel + bias

    files = {}
    for split, n in (("train", 60), ("test", 20)):
        x, y = rng.normal(size=(n, 6)).astype(np.float32), rng.integers(0, 3, size=n)
        y[:3] = [0, 1, 2]
        np.savez(tmp_path / f"{split}_data.npz", features=x, labels=y)
        h, logits = teacher(x)
        files[split] = export.write_outputs(tmp_path / f"{split}_outputs.npz", embedding=h, logits=logits, label=y,
                                            kernel=kernel if split == "train" else None, bias=bias)
    config = load_config(CONFIG, [
        "data.name=local", f"data.files.train={tmp_path / 'train_data.npz'}",
        f"data.files.test={tmp_path / 'test_data.npz'}", "data.num_classes=3", "data.val_fraction=0.25",
        "teacher.model=precomputed", f"teacher.outputs.train={files['train']}", f"teacher.outputs.test={files['test']}"])
    run = pipeline.Run(config, tmp_path / "wd")
    loaded = run.precomputed
    sizes = {}
    for split in ("train", "validation", "test"):
        source = run.split(split)[0]
        sizes[split] = len(source)
        index = rng.integers(0, len(source), size=6)
        h, logits = teacher(np.stack([source[int(i)]["features"] for i in index]))
        got_h, got_l = loaded.caches[split].lookup(index)
        np.testing.assert_allclose(got_h, h, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got_l, logits, rtol=1e-5, atol=1e-5)
    assert sizes == {"train": 45, "validation": 15, "test": 20}


def _sklearn_mlp_outputs(model, x):
    """A fitted binary sklearn MLPClassifier as (last hidden layer h, its one logit z = h @ coefs_[-1] + b)."""
    h = np.asarray(x, np.float64)
    for w, b in zip(model.coefs_[:-1], model.intercepts_[:-1]):
        h = np.maximum(h @ w + b, 0.0)
    return h, h @ model.coefs_[-1] + model.intercepts_[-1]


def test_one_logit_sklearn_teacher_exported_whole_runs_under_smoke(tmp_path, capsys):
    """A scikit-learn MLPClassifier (binary: one logit, head (D, 1)) exported on the whole digits splits, then
    `lelp run --config.smoke=true`: the capped train split (256 rows) does not match the export, and the error names
    data.max_examples_per_split and the fix; with the fix the run reads the teacher as logits [0, z] (said in the
    teacher line) and records the accuracy of sklearn's own predictions."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    full = pipeline.Run(load_config(CONFIG), tmp_path / "data_only")
    data = {}
    for split in ("train", "validation", "test"):
        source, _ = full.split(split)
        rows = [source[i] for i in range(len(source))]
        data[split] = (np.stack([r["image"].reshape(-1) for r in rows]), np.asarray([r["label"] for r in rows]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MLPClassifier(hidden_layer_sizes=(32,), max_iter=200, random_state=0).fit(*data["train"])
    out = tmp_path / "sk"
    for split, (x, y) in data.items():
        h, z = _sklearn_mlp_outputs(model, x)
        assert z.shape == (len(x), 1)
        np.testing.assert_allclose(1 / (1 + np.exp(-z[:, 0])), model.predict_proba(x)[:, 1], rtol=1e-5, atol=1e-7)
        head = dict(kernel=model.coefs_[-1], bias=model.intercepts_[-1]) if split == "train" else {}
        export.write_outputs(out / f"{split}.npz", embedding=h, logits=z, **head)
    wd = tmp_path / "run"
    flags = ["--config.teacher.model=precomputed", *(f"--config.teacher.outputs.{s}={out / s}.npz" for s in data)]
    rc, _, err = run_cli(["run", *smoke(wd), *flags, "--methods", "ce,kd,lelp"], capsys)
    assert rc == 2 and [ln for ln in err.splitlines() if ln.startswith("lelp:")] == [err.strip().splitlines()[-1]]
    assert not wd.exists()
    assert (f"'embedding' has {len(data['train'][0])} rows but the data's train split has 256 examples, capped by "
            "data.max_examples_per_split=256 (--config.smoke=true sets it)") in err
    assert "--config.data.max_examples_per_split=none" in err
    rc, log, err = run_cli(["run", *smoke(wd), *flags, "--config.data.max_examples_per_split=none",
                            "--methods", "ce,kd,lelp"], capsys)
    assert rc == 0, err
    line = next(ln for ln in log.splitlines() if ln.startswith("[teacher]"))
    assert line.endswith("; one logit z per example (a sigmoid/BCE head): read as logits [0, z]"), line
    record = json.loads((wd / "teacher" / "teacher.json").read_text())
    for split, key in (("train", "train_accuracy"), ("validation", "val_accuracy"), ("test", "test_accuracy")):
        x, y = data[split]
        assert record[key] == pytest.approx(float(np.mean(model.predict(x) == y)), abs=1e-12), split
    assert [r["method"] for r in json.loads((wd / "results.json").read_text())["runs"]] == ["ce", "kd", "lelp"]


def test_one_logit_reads_as_zero_and_z_and_a_short_export_names_the_cap(rng, tmp_path):
    """[0, z] logits, [0, k] kernel, [0, b] bias (float64 reference); a file shorter than the capped split names
    data.max_examples_per_split; one logit with three classes is refused."""
    h = rng.normal(size=(30, 6)).astype(np.float32)
    k, b = rng.normal(size=(6, 1)).astype(np.float32), np.array([0.3], np.float32)
    z = h.astype(np.float64) @ k + b
    export.write_outputs(tmp_path / "train.npz", embedding=h, logits=z, kernel=k, bias=b)
    outputs = {"train": str(tmp_path / "train.npz"), "tolerance": 1e-4}
    labels = lambda split: (np.arange(30) % 2).astype(np.int64)  # noqa: E731
    teacher = load_precomputed_teacher(outputs, splits={"train": SplitRows("train", 30)}, num_classes=2,
                                       labels_of=labels)
    got = np.asarray(teacher.caches["train"].logits)
    np.testing.assert_allclose(got, np.concatenate([np.zeros((30, 1)), z], 1), atol=1e-5)
    np.testing.assert_allclose(teacher.caches["train"].logits[np.array([3, 1])], got[[3, 1]])
    np.testing.assert_allclose(teacher.kernel, np.concatenate([np.zeros_like(k), k], 1))
    np.testing.assert_allclose(teacher.bias, [0.0, 0.3])
    assert teacher.caches["train"].logits.shape == (30, 2) and len(teacher.notes) == 1
    with pytest.raises(PrecomputedError, match=r"has 30 rows but the data's train split has 20 examples, capped by "
                                               r"data.max_examples_per_split=20"):
        load_precomputed_teacher(outputs, splits={"train": SplitRows("train", 20)}, num_classes=2, labels_of=labels,
                                 max_examples_per_split=20)
    with pytest.raises(PrecomputedError, match=r"one logit is read as a binary teacher's \[0, z\]\) but the data has 3"):
        load_precomputed_teacher(outputs, splits={"train": SplitRows("train", 30)}, num_classes=3, labels_of=labels)
