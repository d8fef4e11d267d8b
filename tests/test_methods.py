"""Method registry and wiring: each method's train-step loss equals the core functions' value."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _multihost_worker import NUM_CLASSES, mlp, small_config, source, synthetic_arrays

from lelp_jax import methods, train
from lelp_jax.core import feature_losses, losses, projections, statistics, targets
from lelp_jax.config import schema
from lelp_jax.runtime import sharding


def _loss(method, cfg, **inputs):
    """``method.loss`` on ``LossInputs(**inputs)`` with the options parsed from ``cfg``."""
    return method.loss(methods.LossInputs(**inputs), method.parse_options(cfg))


def test_registry_names_and_error():
    assert {"ce", "kd", "lelp", "random", "pca"} <= set(methods.method_names())
    with pytest.raises(ValueError, match="unknown method 'lelpp'; valid methods: .*ce.*kd.*lelp"):
        methods.get_method("lelpp")
    with pytest.raises(ValueError, match="already registered"):
        methods.register_method(methods.get_method("ce"))


def test_method_requirements_and_fit_options():
    cfg = small_config()
    cfg.lelp.num_subclasses = 3
    assert not methods.get_method("ce").needs_teacher
    assert methods.get_method("kd").needs_teacher and not methods.get_method("kd").needs_projections
    for name in ("lelp", "random", "pca"):
        m = methods.get_method(name)
        assert m.needs_teacher and m.needs_projections and m.student_outputs(2, cfg) == 6
    assert methods.get_method("ce").student_outputs(2, cfg) == 2
    assert methods.get_method("lelp").fit_options(cfg) == dict(num_subclasses=3, null_space=True, rotate=True,
                                                                directions="pca", key=0)
    assert methods.get_method("random").fit_options(cfg)["directions"] == "random"
    pca = methods.get_method("pca").fit_options(cfg)
    assert (pca["null_space"], pca["rotate"], pca["directions"]) == (False, False, "pca")


def _setup(rng, method_name, head):
    """A teacher, a student with ``head`` outputs, a batch, an optimizer and the initial state."""
    cfg = small_config()
    cfg.kd.tau, cfg.kd.alpha = 3.0, 0.3
    cfg.lelp.beta, cfg.lelp.tau, cfg.lelp.alpha = 0.7, 2.0, 0.25
    data = synthetic_arrays(64, int(rng.integers(1 << 30)))
    teacher, student = mlp(hidden=12), mlp(num_outputs=head)
    t_vars = teacher.init(jax.random.PRNGKey(int(rng.integers(1 << 30))), {"features": data["features"][:1]})
    method = methods.get_method(method_name)
    opt = train.make_optimizer(cfg.train, num_steps=10)
    state = train.init_train_state(model=student, method=method, optimizer=opt,
                                   sample_batch={"features": data["features"][:1]},
                                   seed=int(rng.integers(1 << 30)), method_cfg=cfg)
    batch = {"features": data["features"][:16], "label": data["label"][:16],
             "mask": (rng.random(16) < 0.8).astype(np.float32)}
    return cfg, data, teacher, t_vars, student, method, opt, state, batch


def _step_loss(mesh, cfg, teacher, t_vars, student, method, opt, state, batch, aux=None):
    step = train.make_train_step(model=student, method=method, optimizer=opt, num_classes=NUM_CLASSES,
                                 method_cfg=cfg, teacher_apply=teacher.apply, mesh=mesh)
    params = jax.tree_util.tree_map(np.asarray, state.params)
    _, metrics = step(sharding.replicate(state, mesh), sharding.shard_batch(batch, mesh),
                      None if t_vars is None else sharding.replicate(t_vars, mesh),
                      None if aux is None else sharding.replicate(aux, mesh))
    return float(metrics["loss"]), params


def test_methods_read_their_options_from_the_config(rng):
    """Each method's options come from its own section of the (complete) config: change it there, the methods follow."""
    cfg = schema.base_config()
    cfg.kd.tau = 3.0
    cfg.lelp.num_subclasses = 5
    cfg.rkd.distance_weight, cfg.rkd.angle_weight = 7.0, 11.0
    cfg.subclass.num_subclasses = 3
    assert methods.get_method("lelp").student_outputs(2, cfg) == 10
    assert methods.get_method("lelp").fit_options(cfg)["num_subclasses"] == 5
    assert methods.get_method("subclass").student_outputs(2, cfg) == 6
    b, c, d = 12, 3, 5
    r, l = rng.normal(size=(b, c)), rng.normal(size=(b, c))
    h_s, h_t = rng.normal(size=(b, d)), rng.normal(size=(b, d))
    m = (rng.random(b) < 0.7).astype(np.float64)
    m[0] = 1.0
    batch = {"label": jnp.asarray(rng.integers(0, c, b)), "mask": jnp.asarray(m, jnp.float32)}
    args = dict(student_logits=jnp.asarray(r, jnp.float32), student_embedding=jnp.asarray(h_s, jnp.float32),
                batch=batch, teacher_embedding=jnp.asarray(h_t, jnp.float32),
                teacher_logits=jnp.asarray(l, jnp.float32), aux=None, method_params={})

    def log_softmax(x):
        x = x - x.max(1, keepdims=True)
        return x - np.log(np.exp(x).sum(1, keepdims=True))

    tau = 3.0  # float64 reference: tau^2 * masked mean of -sum_c softmax(l/tau)_c log softmax(r/tau)_c
    per = -(np.exp(log_softmax(l / tau)) * log_softmax(r / tau)).sum(1)
    want_kd = tau ** 2 * (m * per).sum() / m.sum()
    got_kd = float(_loss(methods.get_method("kd"), cfg, **args))
    np.testing.assert_allclose(got_kd, want_kd, rtol=1e-5)
    # RKD is linear in its weights: the method's extra term = 7 * distance + 11 * angle.
    parts = [float(feature_losses.rkd_loss(args["student_embedding"], args["teacher_embedding"], distance_weight=dw,
                                           angle_weight=aw, mask=batch["mask"])) for dw, aw in ((1.0, 0.0), (0.0, 1.0))]
    got_rkd = float(_loss(methods.get_method("rkd"), cfg, **args)) - got_kd
    np.testing.assert_allclose(got_rkd, 7.0 * parts[0] + 11.0 * parts[1], rtol=1e-4, atol=1e-6)


def test_options_are_frozen_dataclasses_of_the_shipped_defaults():
    """``parse_options(base_config())`` reads the shipped defaults (kd.tau 2, S 4, rkd 25/50) into frozen values."""
    import dataclasses

    base = schema.base_config()
    kd = methods.get_method("kd").parse_options(base)
    assert kd == methods.KDOptions(label_smoothing=0.0, tau=2.0, alpha=0.0, student_tau=None,
                                   tau_squared_scaling=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        kd.tau = 3.0
    rkd = methods.get_method("rkd").parse_options(base)
    assert (rkd.distance_weight, rkd.angle_weight) == (25.0, 50.0)
    lelp = methods.get_method("lelp").parse_options(base)
    assert isinstance(lelp, methods.ProjectionOptions) and (lelp.num_subclasses, lelp.beta) == (4, 1.0)
    assert methods.get_method("lelp").head_outputs(2, lelp) == 2 * base.lelp.num_subclasses
    assert methods.get_method("oracle").head_outputs(2, methods.split_options(base)) is None  # the artifact says


def test_ce_and_kd_losses_match_core(rng):
    mesh = sharding.make_mesh()
    cfg, _, teacher, t_vars, student, method, opt, state, batch = _setup(rng, "ce", NUM_CLASSES)
    loss, params = _step_loss(mesh, cfg, teacher, None, student, method, opt, state, batch)
    _, logits = student.apply({"params": params}, batch)
    want = losses.cross_entropy(logits, jnp.asarray(batch["label"]), mask=jnp.asarray(batch["mask"]))
    np.testing.assert_allclose(loss, float(want), rtol=1e-5)

    cfg, _, teacher, t_vars, student, method, opt, state, batch = _setup(rng, "kd", NUM_CLASSES)
    loss, params = _step_loss(mesh, cfg, teacher, t_vars, student, method, opt, state, batch)
    _, logits = student.apply({"params": params}, batch)
    _, t_logits = teacher.apply(t_vars, batch)
    want = losses.kd_loss(logits, t_logits, tau=3.0, labels=jnp.asarray(batch["label"]), alpha=0.3,
                          mask=jnp.asarray(batch["mask"]))
    np.testing.assert_allclose(loss, float(want), rtol=1e-5)

    cfg, _, teacher, t_vars, student, method, opt, state, batch = _setup(rng, "kd", NUM_CLASSES)
    cfg.kd.student_tau = 1.0  # LELP's convention: no temperature on the student side
    loss, params = _step_loss(mesh, cfg, teacher, t_vars, student, method, opt, state, batch)
    _, logits = student.apply({"params": params}, batch)
    _, t_logits = teacher.apply(t_vars, batch)
    want = losses.kd_loss(logits, t_logits, tau=3.0, labels=jnp.asarray(batch["label"]), alpha=0.3,
                          mask=jnp.asarray(batch["mask"]), student_tau=1.0)
    np.testing.assert_allclose(loss, float(want), rtol=1e-5)


def test_ce_label_smoothing_matches_numpy(rng):
    mesh = sharding.make_mesh()
    cfg, _, teacher, _, student, method, opt, state, batch = _setup(rng, "ce", NUM_CLASSES)
    cfg.train.label_smoothing = 0.2
    loss, params = _step_loss(mesh, cfg, teacher, None, student, method, opt, state, batch)
    _, logits = student.apply({"params": params}, batch)
    z = np.asarray(logits, np.float64)
    logp = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)
    t = 0.8 * np.eye(NUM_CLASSES)[batch["label"]] + 0.2 / NUM_CLASSES
    want = np.sum(batch["mask"] * -(t * logp).sum(1)) / batch["mask"].sum()
    np.testing.assert_allclose(loss, want, rtol=1e-5)


@pytest.mark.parametrize("name", ["lelp", "pca"])
def test_lelp_loss_matches_core_and_numpy(rng, name):
    """Cached mode (teacher outputs in the batch); the loss equals targets + lelp_loss and a float64 reference."""
    mesh = sharding.make_mesh()
    s = 2
    cfg, data, teacher, t_vars, student, method, opt, state, batch = _setup(rng, name, NUM_CLASSES * s)
    emb_all, logit_all = teacher.apply(t_vars, {"features": data["features"]})
    moments = statistics.update_moments(statistics.init_moments(NUM_CLASSES, 12), emb_all,
                                        jnp.asarray(data["label"]))
    proj = projections.fit_projections(moments, classifier_weights=t_vars["params"]["head"]["kernel"].T,
                                       **method.fit_options(cfg))
    t_emb, t_logits = (np.asarray(x) for x in teacher.apply(t_vars, batch))
    cached = {**batch, "teacher_embedding": t_emb, "teacher_logits": t_logits}
    loss, params = _step_loss(mesh, cfg, teacher, None, student, method, opt, state, cached, aux=proj)
    _, logits = student.apply({"params": params}, batch)
    t = targets.subclass_targets(proj, jnp.asarray(t_emb), jnp.asarray(t_logits), beta=0.7, tau=2.0)
    want = losses.lelp_loss(logits, t, labels=jnp.asarray(batch["label"]), alpha=0.25, num_classes=NUM_CLASSES,
                            mask=jnp.asarray(batch["mask"]))
    np.testing.assert_allclose(loss, float(want), rtol=1e-5)

    # float64 NumPy reference of the whole composition
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    u, mu = np.asarray(proj.directions, np.float64), np.asarray(proj.means, np.float64)
    z = np.einsum("bcd,cds->bcs", t_emb.astype(np.float64)[:, None, :] - mu[None], u)
    p = np.exp(log_softmax(t_logits.astype(np.float64) / 2.0))
    tt = (p[:, :, None] * np.exp(log_softmax(z / 0.7))).reshape(16, -1)
    logq = log_softmax(np.asarray(logits, np.float64))
    soft = -(tt * logq).sum(1)
    logq_c = np.log(np.exp(logq.reshape(16, NUM_CLASSES, s)).sum(-1))
    hard = -logq_c[np.arange(16), batch["label"]]
    m = batch["mask"]
    ref = np.sum(m * (0.75 * soft + 0.25 * hard)) / m.sum()
    np.testing.assert_allclose(loss, ref, rtol=1e-4)


def _aux_for(name, rng, c, s, d):
    """A fitted artifact of the right kind for method ``name`` on random embeddings (D = d)."""
    from lelp_jax.core import clustering

    h = rng.normal(size=(64, d)).astype(np.float32)
    y = np.arange(64) % c
    if name == "lelp":
        m = statistics.update_moments(statistics.init_moments(c, d), jnp.asarray(h), jnp.asarray(y))
        return projections.fit_projections(m, classifier_weights=jnp.asarray(rng.normal(size=(c, d)), jnp.float32),
                                           num_subclasses=s, key=0)
    if name == "kmeans":
        return clustering.fit_class_kmeans(jax.random.PRNGKey(0), h, y, num_classes=c, num_subclasses=s, num_iters=3)
    if name == "oracle":
        fine = np.arange(64) % (c * s)
        return clustering.oracle_slots(fine // s, fine, num_classes=c, num_fine=c * s)
    return None


@pytest.mark.parametrize("name", ["kd", "lelp", "kmeans", "oracle", "fitnet", "rkd"])
def test_label_smoothing_reaches_every_hard_term(rng, name):
    """loss(eps) - loss(0) = alpha * (H_eps - H_0) with H the hard term on the class log-probabilities
    (float64 NumPy), and eps leaves the loss unchanged when alpha = 0."""
    b, c, s, d = 12, 2, 3, 10
    method = methods.get_method(name)
    aux = _aux_for(name, rng, c, s, d)
    width = method.student_outputs(c, schema.base_config(), aux) if aux is not None else c
    width = c * s if name in ("lelp", "kmeans") else width
    y = np.arange(b) % c
    fine = (np.arange(b) % (c * s)) if name == "oracle" else None
    y = fine // s if fine is not None else y
    batch = {"label": jnp.asarray(y), "mask": jnp.asarray((rng.random(b) < 0.8).astype(np.float32))}
    batch["mask"] = batch["mask"].at[0].set(1.0)
    if fine is not None:
        batch["fine_label"] = jnp.asarray(fine)
    r = rng.normal(size=(b, width)).astype(np.float32)
    r.reshape(b, c, -1)[np.arange(b), y] += 3.0  # confident on the true class: smoothing clearly costs
    t_emb, t_logits = rng.normal(size=(b, d)).astype(np.float32), rng.normal(size=(b, c)).astype(np.float32)
    params = method.init_params(jax.random.PRNGKey(0), student_embedding_dim=d, teacher_embedding_dim=d,
                                options=method.parse_options(schema.base_config())) if method.init_params else {}

    def loss(eps, alpha):
        cfg = schema.base_config()
        cfg.update(dict(train=dict(label_smoothing=eps), kd=dict(tau=2.0, alpha=alpha),
                        lelp=dict(num_subclasses=s, tau=1.5, alpha=alpha)))
        return float(_loss(method, cfg, student_logits=jnp.asarray(r),
                           student_embedding=jnp.asarray(t_emb[:, ::-1].copy()), batch=batch,
                           teacher_embedding=jnp.asarray(t_emb), teacher_logits=jnp.asarray(t_logits), aux=aux,
                           method_params=params))

    x = r.astype(np.float64)
    logq = x - x.max(1, keepdims=True)
    logq = logq - np.log(np.exp(logq).sum(1, keepdims=True))
    logq_c = np.log(np.exp(logq).reshape(b, c, -1).sum(-1))
    m = np.asarray(batch["mask"], np.float64)
    onehot = np.eye(c)[y]

    def hard(eps):
        per = -(((1 - eps) * onehot + eps / c) * logq_c).sum(1)
        return (m * per).sum() / m.sum()

    eps, alpha = 0.2, 0.4
    np.testing.assert_allclose(loss(eps, alpha) - loss(0.0, alpha), alpha * (hard(eps) - hard(0.0)),
                               rtol=1e-4, atol=1e-6)
    assert hard(eps) - hard(0.0) > 0.05  # the check can fail
    np.testing.assert_allclose(loss(eps, 0.0), loss(0.0, 0.0), rtol=1e-6)


@pytest.mark.parametrize("student_tau", [1.0, 1.7])
def test_lelp_with_one_subclass_equals_kd_through_the_train_step(rng, student_tau):
    """The paper's identity through the compiled step: S = 1, kd.student_tau = lelp.student_tau,
    kd.tau_squared_scaling = False, same tau, alpha and label smoothing -> equal losses."""
    mesh = sharding.make_mesh()
    cfg, data, teacher, t_vars, student, lelp, opt, state, batch = _setup(rng, "lelp", NUM_CLASSES)
    cfg.lelp.num_subclasses = 1
    cfg.lelp.tau = cfg.kd.tau = 2.5
    cfg.lelp.alpha = cfg.kd.alpha = 0.3
    cfg.lelp.student_tau = cfg.kd.student_tau = student_tau
    cfg.kd.tau_squared_scaling = False
    cfg.train.label_smoothing = 0.1
    emb_all, _ = teacher.apply(t_vars, {"features": data["features"]})
    moments = statistics.update_moments(statistics.init_moments(NUM_CLASSES, 12), emb_all,
                                        jnp.asarray(data["label"]))
    proj = projections.fit_projections(moments, classifier_weights=t_vars["params"]["head"]["kernel"].T,
                                       **lelp.fit_options(cfg))
    assert lelp.student_outputs(NUM_CLASSES, cfg, proj) == NUM_CLASSES
    t_emb, t_logits = (np.asarray(x) for x in teacher.apply(t_vars, batch))
    cached = {**batch, "teacher_embedding": t_emb, "teacher_logits": t_logits}
    loss_lelp, params = _step_loss(mesh, cfg, teacher, None, student, lelp, opt, state, cached, aux=proj)
    kd = methods.get_method("kd")
    state_kd = train.init_train_state(model=student, method=kd, optimizer=opt, sample_batch={"features": data["features"][:1]},
                                      seed=0, method_cfg=cfg)
    state_kd = state_kd.replace(params=jax.tree_util.tree_map(jnp.asarray, params))
    loss_kd, _ = _step_loss(mesh, cfg, teacher, None, student, kd, opt, state_kd, cached)
    np.testing.assert_allclose(loss_lelp, loss_kd, rtol=1e-6)
    cfg.kd.tau_squared_scaling = True  # Hinton's scaling breaks the identity (tau^2 = 6.25 on the soft term)
    loss_scaled, _ = _step_loss(mesh, cfg, teacher, None, student, kd, opt, state_kd, cached)
    assert loss_scaled > 2 * loss_kd


def test_lelp_needs_projections(rng):
    mesh = sharding.make_mesh()
    cfg, _, teacher, t_vars, student, method, opt, state, batch = _setup(rng, "lelp", 4)
    with pytest.raises(ValueError, match="Projections"):
        _step_loss(mesh, cfg, teacher, t_vars, student, method, opt, state, batch)


def test_subclass_class_log_probs_matches_numpy(rng):
    logits = rng.normal(size=(5, 6)).astype(np.float32)
    got = methods.get_method("lelp").class_log_probs(jnp.asarray(logits), 2)
    x = logits.astype(np.float64)
    logq = x - np.log(np.exp(x).sum(1, keepdims=True))
    want = np.log(np.exp(logq.reshape(5, 2, 3)).sum(-1))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="plain-head"):
        methods.get_method("kd").class_log_probs(jnp.asarray(logits), 2)


def _adapter_method():
    """A FitNet-style method built from the registry's parts: extra trainable params via ``init_params``."""
    from lelp_jax.core import feature_losses

    def init_params(key, *, student_embedding_dim, teacher_embedding_dim, options):
        return {"kernel": 0.1 * jax.random.normal(key, (student_embedding_dim, teacher_embedding_dim)),
                "bias": jnp.zeros((teacher_embedding_dim,))}

    def loss(inputs: methods.LossInputs, options: None) -> jax.Array:
        mask = methods.batch_mask(inputs.batch)
        return (losses.cross_entropy(inputs.student_logits, inputs.batch["label"], mask=mask)
                + feature_losses.fitnet_loss(inputs.student_embedding, inputs.teacher_embedding,
                                             inputs.method_params, mask=mask))

    return methods.Method(name="adapter_test", needs_teacher=True, parse_options=lambda config: None, loss=loss,
                          head_outputs=methods.plain_head, class_log_probs=methods.plain_class_log_probs,
                          init_params=init_params)


def test_method_params_are_trained_and_checkpointed(rng, tmp_path):
    from lelp_jax.core import feature_losses

    mesh = sharding.make_mesh()
    cfg, data, teacher, t_vars, student, _, _, _, batch = _setup(rng, "ce", NUM_CLASSES)
    opt = train.make_optimizer(small_config(warmup_steps=0).train, num_steps=10)  # lr(0) > 0
    method = _adapter_method()
    state = train.init_train_state(model=student, method=method, optimizer=opt,
                                   sample_batch={"features": data["features"][:1]}, seed=1, method_cfg=cfg,
                                   teacher_embedding_dim=12)
    assert state.method_params["kernel"].shape == (8, 12)
    step = train.make_train_step(model=student, method=method, optimizer=opt, num_classes=NUM_CLASSES,
                                 method_cfg=cfg, teacher_apply=teacher.apply, mesh=mesh)
    adapter0 = jax.tree_util.tree_map(np.asarray, state.method_params)
    new, metrics = step(sharding.replicate(state, mesh), sharding.shard_batch(batch, mesh),
                        sharding.replicate(t_vars, mesh), None)
    assert not np.allclose(np.asarray(new.method_params["kernel"]), adapter0["kernel"])  # the adapter learns
    s_emb, s_logits = student.apply({"params": state.params}, batch)  # replicate() copied: state is intact
    t_emb, _ = teacher.apply(t_vars, batch)
    mask = jnp.asarray(batch["mask"])
    want = (losses.cross_entropy(s_logits, jnp.asarray(batch["label"]), mask=mask)
            + feature_losses.fitnet_loss(s_emb, t_emb, adapter0, mask=mask))
    np.testing.assert_allclose(float(metrics["loss"]), float(want), rtol=1e-5)

    rec = train.train_and_evaluate(model=student, method=method, cfg=small_config(num_steps=4, eval_every=2,
                                                                                   checkpoint_every=2),
                                   train_source=source(64, 0), val_source=source(32, 1), test_source=source(32, 2),
                                   mesh=mesh, workdir=str(tmp_path), seed=0, num_classes=NUM_CLASSES,
                                   teacher_apply=teacher.apply, teacher_variables=t_vars, progress=False)
    assert rec["steps"] == 4 and rec["method"] == "adapter_test"
    # resume restores the adapter too: a second call continues from the final checkpoint, same record
    again = train.train_and_evaluate(model=student, method=method, cfg=small_config(num_steps=4, eval_every=2,
                                                                                     checkpoint_every=2),
                                     train_source=source(64, 0), val_source=source(32, 1), test_source=source(32, 2),
                                     mesh=mesh, workdir=str(tmp_path), seed=0, num_classes=NUM_CLASSES,
                                     teacher_apply=teacher.apply, teacher_variables=t_vars, progress=False)
    assert rec["resumed_from_step"] is None and again["resumed_from_step"] == 4  # restored, not retrained
    assert again["history"] == rec["history"]


def test_every_method_loss_has_the_typed_signature():
    """``loss(inputs: LossInputs, options: O) -> jax.Array`` for every method (no ``**`` swallowing), with
    ``O`` the frozen dataclass ``parse_options`` builds from the complete config."""
    import dataclasses
    import inspect
    import typing

    base = schema.base_config()
    for method in (*methods.METHODS.values(), methods.SUBCLASS_TEACHER):
        params = inspect.signature(method.loss).parameters
        assert list(params) == ["inputs", "options"], method.name
        assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params.values()), method.name
        hints = typing.get_type_hints(method.loss)
        assert hints["inputs"] is methods.LossInputs and hints["return"] is jax.Array, method.name
        options = method.parse_options(base)
        assert isinstance(options, hints["options"]), method.name
        assert dataclasses.is_dataclass(options) and type(options).__dataclass_params__.frozen, method.name
