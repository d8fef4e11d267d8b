"""Unlabelled transfer rows (issue 23): masks of the hard-label terms, the labelled-fraction split,
transfer files and their bad inputs, and `lelp run` with labelled_fraction end to end."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from lelp_jax import cli
from lelp_jax.config import base_config
from lelp_jax.data.splits import TransferSource, labelled_rows, load_splits
from lelp_jax.methods import LossInputs, get_method
from lelp_jax.runtime.errors import ConfigError


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _batch(rng, b=12, c=3):
    """A batch with padding rows (mask 0) and unlabelled rows (label -1), each kind at least twice."""
    labels = rng.integers(0, c, size=b)
    labels[rng.choice(b, size=4, replace=False)] = -1
    mask = np.ones(b)
    mask[rng.choice(np.flatnonzero(labels >= 0), size=2, replace=False)] = 0.0
    mask[rng.choice(np.flatnonzero(labels < 0), size=1, replace=False)] = 0.0
    return labels, mask


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ce_and_kd_hard_terms_use_labelled_rows_only_soft_terms_every_row(rng, smoothing):
    b, c, tau, alpha = 12, 3, 2.0, 0.3
    labels, mask = _batch(rng, b, c)
    r = rng.normal(size=(b, c)) * 2
    l = rng.normal(size=(b, c)) * 2
    cfg = base_config()
    cfg.kd.alpha, cfg.kd.tau, cfg.train.label_smoothing = alpha, tau, smoothing
    batch = {"label": jnp.asarray(labels, jnp.int32), "mask": jnp.asarray(mask, jnp.float32)}
    inputs = LossInputs(student_logits=jnp.asarray(r, jnp.float32), batch=batch,
                        teacher_logits=jnp.asarray(l, jnp.float32), teacher_embedding=jnp.zeros((b, 4)))

    # float64 references: hard CE over rows with mask 1 and a label; soft KD over every row with mask 1.
    onehot = np.eye(c)[np.maximum(labels, 0)]
    target = (1 - smoothing) * onehot + smoothing / c
    hard_rows = -(target * _log_softmax(r)).sum(-1)
    m_hard = mask * (labels >= 0)
    hard = (m_hard * hard_rows).sum() / m_hard.sum()
    p = np.exp(_log_softmax(l / tau))
    soft = tau ** 2 * (mask * -(p * _log_softmax(r / tau)).sum(-1)).sum() / mask.sum()

    ce = get_method("ce")
    kd = get_method("kd")
    np.testing.assert_allclose(float(ce.loss(inputs, ce.parse_options(cfg))), hard, rtol=1e-5)
    np.testing.assert_allclose(float(kd.loss(inputs, kd.parse_options(cfg))), (1 - alpha) * soft + alpha * hard,
                               rtol=1e-5)


def test_lelp_alpha_term_masks_unlabelled_rows(rng):
    """LELP's hard term is CE(y, log q_c) on labelled rows; a batch of transfer rows only has no hard term."""
    from lelp_jax.methods.registry import hard_label_loss

    b, c, s = 10, 2, 3
    labels, mask = _batch(rng, b, c)
    r = rng.normal(size=(b, c * s))
    logq = _log_softmax(r).reshape(b, c, s)
    logq_c = np.log(np.exp(logq).sum(-1))
    m = mask * (labels >= 0)
    want = (m * -logq_c[np.arange(b), np.maximum(labels, 0)]).sum() / m.sum()
    batch = {"label": jnp.asarray(labels, jnp.int32), "mask": jnp.asarray(mask, jnp.float32)}
    got = hard_label_loss(jnp.asarray(logq_c, jnp.float32), batch, 0.0)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    none = {"label": jnp.full((b,), -1, jnp.int32), "mask": jnp.ones((b,), jnp.float32)}
    assert float(hard_label_loss(jnp.asarray(logq_c, jnp.float32), none, 0.0)) == 0.0


def test_labelled_rows_are_stratified_seeded_and_refuse_a_class_left_with_one_row(rng):
    labels = rng.permutation(np.repeat([0, 1, 2], [50, 30, 20]))
    keep = labelled_rows(labels, 0.2, seed=3, num_classes=3)
    assert [int(keep[labels == k].sum()) for k in range(3)] == [10, 6, 4]
    assert np.array_equal(keep, labelled_rows(labels, 0.2, seed=3, num_classes=3))
    assert not np.array_equal(keep, labelled_rows(labels, 0.2, seed=4, num_classes=3))
    with pytest.raises(ConfigError, match="leaves class 2 with 1 labelled"):
        labelled_rows(labels, 0.05, seed=0, num_classes=3)


def _synthetic(**kw):
    cfg = base_config()
    cfg.data.name = "synthetic_subclasses"
    cfg.data.synthetic.update(dict(num_train=200, num_validation=50, num_test=50, input_dim=6, **kw))
    return cfg


def test_synthetic_transfer_and_labelled_fraction_make_one_distillation_split():
    cfg = _synthetic(num_transfer=120)
    cfg.data.labelled_fraction = 0.25
    train, _ = load_splits(cfg.data, "train")[0]["train"]
    assert isinstance(train, TransferSource) and len(train) == 320
    assert train.num_labelled == 50 and train.num_transfer == 270
    rows = [train[i] for i in range(len(train))]
    assert [r["index"] for r in rows] == list(range(320))
    assert all(r["label"] == -1 for r in rows[200:]) and all("fine_label" in r for r in rows)
    # the labelled rows keep their true labels, in the original order; the teacher sees those
    true = np.asarray([train.train[i]["label"] for i in range(200)])
    lab = train.labelled()
    assert len(lab) == 50 and all(lab[i]["label"] == true[lab.parent_rows[1][i]] for i in range(50))
    # validation and test untouched
    assert len(load_splits(cfg.data, "validation")[0]["validation"][0]) == 50


def test_a_labelled_transfer_split_is_ignored_once_or_used(capsys):
    cfg = _synthetic()
    cfg.data.transfer_split = "test"
    train, _ = load_splits(cfg.data, "train")[0]["train"]
    assert capsys.readouterr().out.count("transfer split 'test' carries labels: ignored") == 1
    assert (train.num_labelled, train.num_transfer) == (200, 50)
    assert all(train[i]["label"] == -1 for i in range(200, 250))
    cfg.data.transfer_labels = "use"
    train, _ = load_splits(cfg.data, "train")[0]["train"]
    assert "kept" in capsys.readouterr().out
    assert (train.num_labelled, train.num_transfer) == (250, 0)
    test, _ = load_splits(cfg.data, "test")[0]["test"]
    assert [train[200 + i]["label"] for i in range(50)] == [test[i]["label"] for i in range(50)]


def _run(args):
    return cli.main(["run", *args])


def test_bad_transfer_inputs_are_one_clear_error_before_any_work(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 5)).astype(np.float32), np.repeat([0, 1], 20)
    np.savez(tmp_path / "train.npz", features=x, labels=y)
    np.savez(tmp_path / "test.npz", features=x[:10], labels=y[:10])
    np.savez(tmp_path / "wide.npz", features=rng.normal(size=(8, 7)))
    np.savez(tmp_path / "empty.npz", features=np.zeros((0, 5), np.float32))
    base = ["--config", "configs/text_csv.py", "--config.data.files.train", str(tmp_path / "train.npz"),
            "--config.data.files.test", str(tmp_path / "test.npz"), "--methods", "ce"]
    cases = {"wide.npz": "need train's width", "empty.npz": "has no examples"}
    for name, message in cases.items():
        wd = tmp_path / f"wd_{name}"
        assert _run([*base, "--workdir", str(wd), "--config.data.files.transfer", str(tmp_path / name)]) != 0
        err = capsys.readouterr().err
        assert err.startswith("lelp: error:") and message in err and err.count("\n") == 1, err
        assert not (wd / "teacher").exists()
    for fraction, message in (("0", "must be in (0, 1]"), ("1.5", "must be in (0, 1]"),
                              ("0.05", "leaves class")):
        wd = tmp_path / f"wd_{fraction}"
        assert _run([*base, "--workdir", str(wd), f"--config.data.labelled_fraction={fraction}"]) != 0
        err = capsys.readouterr().err
        assert err.startswith("lelp: error:") and message in err, err
        assert not (wd / "teacher").exists()


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """`lelp run` on synthetic smoke data, 10 % labelled plus 300 transfer rows, every method."""
    wd = tmp_path_factory.mktemp("transfer") / "wd"
    args = ["--config", "configs/synthetic_subclasses.py", "--workdir", str(wd), "--config.smoke=true",
            "--config.data.labelled_fraction=0.1", "--config.data.synthetic.num_transfer=300",
            "--config.teacher.train.num_steps=30", "--config.teacher.train.batch_size=16",
            "--config.train.batch_size=16", "--config.train.num_steps=10", "--config.train.checkpoint_every=0",
            "--config.teacher.train.checkpoint_every=0", "--methods", "ce,kd,lelp,kmeans,oracle"]
    assert _run(args) == 0
    return wd


def test_every_method_runs_teacher_and_ce_see_only_labelled_rows(synthetic_run):
    wd = synthetic_run
    teacher = json.loads((wd / "teacher" / "teacher.json").read_text())
    # smoke caps train at 256: 26 labelled (10 % per class), 230 hidden + 256 transfer rows (capped too)
    assert teacher["train_on"] == "labelled"
    assert teacher["train_examples"] == teacher["labelled_examples"] == 26
    assert teacher["transfer_examples"] == 230 + 256
    results = json.loads((wd / "results.json").read_text())
    by = {r["method"]: r for r in results["runs"]}
    assert set(by) == {"ce", "kd", "lelp", "kmeans", "oracle"}
    assert by["ce"]["train_examples"] == 26
    for m in ("kd", "lelp", "kmeans", "oracle"):
        assert by[m]["train_examples"] == 512 and by[m]["labelled_examples"] == 26
    for r in by.values():
        assert np.isfinite(r["test_accuracy_best_val"])
    with np.load(wd / "statistics.npz") as f:
        assert int(f["count"].sum()) == 512  # every row, the transfer rows under the teacher's argmax


def test_bring_your_own_csv_with_an_unlabelled_transfer_csv(tmp_path, capsys):
    """configs/text_csv.py on tests/data's reviews plus a transfer.csv of texts only (the MiniLM teacher swapped
    for a one-layer transformer, as in test_cli, to keep it seconds-long)."""
    data = os.path.join(os.path.dirname(__file__), "data")
    lines = open(os.path.join(data, "reviews_test.csv")).read().splitlines()[1:]
    (tmp_path / "transfer.csv").write_text("text\n" + "\n".join(x.rsplit(",", 1)[0] for x in lines) + "\n")
    (tmp_path / "labelled_transfer.csv").write_text("text,label\n" + "\n".join(lines) + "\n")
    base = ["--config", "configs/text_csv.py", "--config.smoke=true", "--seeds", "0",
            f"--config.data.files.train={data}/reviews_train.csv", f"--config.data.files.test={data}/reviews_test.csv",
            "--config.teacher.model=text_transformer", "--config.teacher.pretrained=none",
            "--config.teacher.model_kwargs.d_model=16", "--config.teacher.model_kwargs.num_layers=1",
            "--config.teacher.model_kwargs.num_heads=2", "--config.teacher.train.num_steps=4",
            "--config.train.num_steps=4", "--config.lelp.num_subclasses=2", "--config.teacher.train.batch_size=16",
            "--config.train.batch_size=16"]
    wd = tmp_path / "wd"
    assert _run([*base, "--workdir", str(wd), "--methods", "ce,kd,lelp",
                 "--config.data.files.transfer", str(tmp_path / "transfer.csv")]) == 0, capsys.readouterr().err
    runs = {r["method"]: r for r in json.loads((wd / "results.json").read_text())["runs"]}
    n_train = 64 - round(64 * 0.1)  # text_csv carves validation (data.val_fraction) from train
    assert runs["kd"]["transfer_examples"] == len(lines) and runs["kd"]["labelled_examples"] == n_train
    assert runs["ce"]["train_examples"] == n_train and runs["lelp"]["train_examples"] == n_train + len(lines)
    capsys.readouterr()
    # a transfer file with a label column: said once, ignored
    wd2 = tmp_path / "wd2"
    assert _run([*base, "--methods", "kd", "--workdir", str(wd2), "--config.data.files.transfer",
                 str(tmp_path / "labelled_transfer.csv")]) == 0
    out = capsys.readouterr().out
    assert out.count("has a label column: ignored") == 1, out
    run = json.loads((wd2 / "results.json").read_text())["runs"][0]
    assert run["transfer_examples"] == len(lines) and run["labelled_examples"] == n_train


def test_accuracy_against_labelled_share_stats_and_report_plot(tmp_path, rng):
    """fraction_stats against a float64 hand computation (t_{0.975, 2} = 4.302653); `lelp report` on workdirs
    of different labelled shares draws the accuracy-against-fraction plot."""
    from lelp_jax import report
    from lelp_jax.report.plots import fraction_stats, labelled_share

    points, accs = [], {}
    for n_labelled in (10, 40):
        acc = rng.uniform(0.5, 0.9, size=(2, 3))  # method x seed
        accs[n_labelled] = acc
        runs = [{"method": m, "seed": s, "test_accuracy_best_val": float(acc[i, s]), "test_accuracy_last": 0.5,
                 "best_val_accuracy": 0.5, "labelled_examples": n_labelled, "transfer_examples": 100 - n_labelled,
                 "history": [{"step": k, "val_accuracy": float(rng.uniform()), "train_loss": 1.0} for k in (5, 10)]}
                for i, m in enumerate(("kd", "lelp")) for s in range(3)]
        assert labelled_share(runs) == n_labelled / 100
        points.append((n_labelled / 100, runs))
    stats = fraction_stats(points)
    for i, m in enumerate(("kd", "lelp")):
        for j, n_labelled in enumerate((10, 40)):
            a = accs[n_labelled][i].astype(np.float64)
            x, mean, half, n = stats[m][j]
            assert (x, n) == (n_labelled / 100, 3)
            np.testing.assert_allclose([mean, half], [a.mean(), 4.302653 * a.std(ddof=1) / np.sqrt(3)], rtol=1e-6)
    for k, (_, runs) in enumerate(points):
        root = tmp_path / f"wd{k}"
        root.mkdir()
        (root / "results.json").write_text(json.dumps({"dataset": "synthetic_subclasses", "config_name": f"f{k}",
                                                       "teacher": {"model": "mlp"}, "runs": runs}))
    res = report.build_report([tmp_path / "wd0", tmp_path / "wd1"], tmp_path / "out")
    share = [p for p in res["plots"] if p.endswith("_labelled_share.png")]
    assert len(share) == 1 and os.path.getsize(share[0]) > 0
    assert "labelled_share.png" in (tmp_path / "out" / "report.md").read_text()
