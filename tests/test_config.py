"""Config loading, override parsing, typo suggestions, smoke switch, locking."""
import textwrap

import ml_collections
import pytest

from lelp_jax import config as cfg
from lelp_jax.runtime.errors import ConfigError


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "exp.py"
    path.write_text(
        textwrap.dedent(
            '''
            """Test experiment. Command: lelp run --config exp.py --workdir /tmp/x"""
            from lelp_jax.config import base_config

            def get_config():
                c = base_config()
                c.name = "exp"
                c.train.num_steps = 100
                return c
            '''
        )
    )
    return path


def test_base_config_has_contract_sections():
    c = cfg.base_config()
    for section in ("data", "teacher", "student", "lelp", "kd", "train", "methods", "seeds", "mesh", "distributed"):
        assert section in c
    for key in ("num_subclasses", "beta", "tau", "null_space", "rotate", "standardize", "fit_labels", "alpha"):
        assert key in c.lelp
    cfg.validate_config(c)


def test_override_types_are_parsed_like_config_flags(config_file):
    c = cfg.load_config(
        config_file,
        [
            "--config.train.num_steps=7",
            "--config.train.learning_rate=3e-4",
            "--config.lelp.rotate=false",
            "--config.lelp.null_space=1",
            "--config.seeds=1,2,4",
            "--config.methods=[ce,lelp]",
            "--config.teacher.model_kwargs.hidden=32,16",
            "--config.data.max_examples_per_split=50",
            "--config.teacher.checkpoint=/some/where",
            "config.kd.tau=4",  # prefix-less 'config.' form too
            "--config.name=renamed",
        ],
    )
    assert c.train.num_steps == 7 and isinstance(c.train.num_steps, int)
    assert c.train.learning_rate == pytest.approx(3e-4) and isinstance(c.train.learning_rate, float)
    assert c.lelp.rotate is False and c.lelp.null_space is True
    assert tuple(c.seeds) == (1, 2, 4) and all(isinstance(s, int) for s in c.seeds)
    assert tuple(c.methods) == ("ce", "lelp")
    assert tuple(c.teacher.model_kwargs.hidden) == (32, 16)
    assert c.data.max_examples_per_split == 50
    assert c.teacher.checkpoint == "/some/where"
    assert c.kd.tau == 4.0 and isinstance(c.kd.tau, float)
    assert c.name == "renamed"


def test_placeholder_can_be_reset_to_none_and_model_kwargs_accept_new_keys(config_file):
    c = cfg.load_config(
        config_file,
        ["--config.data.max_examples_per_split=5", "--config.data.max_examples_per_split=none",
         "--config.student.model_kwargs.dropout=0.25", "--config.data.files.train=/data/train.csv"],
    )
    assert c.data.files.train == "/data/train.csv"
    assert c.data.max_examples_per_split is None
    assert c.student.model_kwargs.dropout == 0.25


@pytest.mark.parametrize(
    "override, needle",
    [
        ("--config.train.num_step=5", "'train.num_steps'"),
        ("--config.tran.num_steps=5", "'train.num_steps'"),
        ("--config.lelp.betta=2", "'lelp.beta'"),
    ],
)
def test_typo_names_key_and_suggests_closest(config_file, override, needle):
    with pytest.raises(ConfigError) as e:
        cfg.load_config(config_file, [override])
    msg = str(e.value)
    assert "unknown config key" in msg and needle in msg
    assert override.split("=")[0].removeprefix("--config.") in msg


@pytest.mark.parametrize(
    "override, needle",
    [
        ("--config.train.num_steps=1.5", "int"),
        ("--config.lelp.rotate=maybe", "bool"),
        ("--config.train.learning_rate=fast", "float"),
        ("--config.seeds=0,x", "int"),
        ("--config.train=3", "section"),
        ("--config.train.num_steps", "no value"),
        ("--config.lelp.fit_labels=fine", "'labels' or 'teacher'"),
        ("--config.seeds=1,1", "twice"),
        ("--config.teacher.train.schedule=step", "teacher.train.schedule must be cosine or constant"),
    ],
)
def test_bad_values_raise_config_error(config_file, override, needle):
    with pytest.raises(ConfigError, match=needle):
        cfg.load_config(config_file, [override])


def test_train_sections_are_checked_once_for_configs_and_dicts():
    """One check serves a loaded config's train sections and a plain dict (the training loop's merged section)."""
    from lelp_jax.config.schema import base_config, validate_train

    good = base_config().train.to_dict()
    validate_train(good)
    validate_train(base_config().teacher.train, "teacher.train")
    for key, bad, needle in (("optimizer", "lamb", "train.optimizer must be adam, adamw or sgd, got 'lamb'"),
                             ("schedule", "step", "train.schedule must be cosine or constant"),
                             ("compute_dtype", "float16", "train.compute_dtype must be float32 or bfloat16"),
                             ("batch_size", 0, "train.batch_size must be >= 1, got 0")):
        with pytest.raises(ConfigError, match=needle):
            validate_train({**good, key: bad})


def test_config_is_locked(config_file):
    c = cfg.load_config(config_file, [])
    with pytest.raises(AttributeError):
        c.train.new_key = 1
    with pytest.raises(AttributeError):
        c.new_section = 1


def test_smoke_shrinks_but_explicit_override_wins(config_file):
    c = cfg.load_config(config_file, ["--config.smoke=true", "--config.train.num_steps=12"])
    assert c.data.max_examples_per_split == 256
    assert c.teacher.train.num_steps == 30
    assert c.train.num_steps == 12
    assert tuple(c.seeds) == (0,)
    plain = cfg.load_config(config_file, [])
    assert plain.train.num_steps == 100 and plain.data.max_examples_per_split is None


def test_missing_file_and_missing_get_config(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        cfg.load_config(tmp_path / "nope.py")
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="get_config"):
        cfg.load_config(bad)


def test_identity_ignores_methods_seeds_and_mesh(config_file):
    a = cfg.load_config(config_file, ["--config.methods=ce", "--config.seeds=0"])
    b = cfg.load_config(config_file, ["--config.methods=kd,lelp", "--config.seeds=3,4", "--config.mesh.num_devices=2"])
    c = cfg.load_config(config_file, ["--config.lelp.beta=2"])
    assert cfg.identity_dict(a) == cfg.identity_dict(b)
    assert cfg.identity_dict(a) != cfg.identity_dict(c)
    assert cfg.identity_dict(cfg.config_to_dict(a)) == cfg.identity_dict(a)


def test_every_shipped_config_loads_and_validates():
    from pathlib import Path

    configs = sorted((Path(cfg.__file__).resolve().parent.parent.parent / "configs").glob("*.py"))
    configs = [p for p in configs if p.stem != "__init__"]
    assert configs, "configs/ is empty"
    for path in configs:
        c = cfg.load_config(path, [])
        assert isinstance(c, ml_collections.ConfigDict)
        assert c.name == path.stem, f"{path.name}: config.name should be {path.stem!r}"
        doc = cfg.loading._load_module(path).__doc__
        assert doc and "lelp run" in doc, f"{path.name}: docstring must give the command"
        smoke = cfg.load_config(path, ["--config.smoke=true"])
        assert smoke.train.num_steps <= 30


def test_load_config_methods_and_seeds_replace_the_configs_after_other_overrides():
    """``--methods`` / ``--seeds`` of every command (run, sweep, kfold) go through load_config's keywords."""
    c = cfg.load_config("digits_binary", ["--config.methods=ce", "--config.seeds=7"], methods="kd,lelp", seeds="3,4")
    assert tuple(c.methods) == ("kd", "lelp") and tuple(c.seeds) == (3, 4)
    c = cfg.load_config("digits_binary", ["--config.methods=ce"])
    assert tuple(c.methods) == ("ce",)


def test_unknown_method_is_refused_by_preflight_with_a_hint(config_file, tmp_path):
    """The config layer sits below the methods: the registry check is preflight's, before any write."""
    from lelp_jax.pipeline.context import Run, check_method_names, preflight

    config = cfg.load_config(config_file, ["--config.methods=ce,kdd"])
    with pytest.raises(ConfigError, match="did you mean 'kd'"):
        check_method_names(config.methods)
    with pytest.raises(ConfigError, match="unknown method 'kdd'"):
        preflight(Run(config, tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()
