r"""ce vs kd vs lelp and lelp_kmeans (+ random/pca ablations) on digits odd/even.

scikit-learn's bundled 8x8 digits (1,797 images) relabelled odd vs even: a binary
task whose two classes each hide five real subclasses (the digits). Teacher: MLP
64 -> 256 -> 256 -> 2 (83k params, about 98% test). Student: MLP 64 -> 8 -> C*S
(538 params with a 2-way head; about 150x fewer than the teacher).

Command:
  lelp run --config configs/digits_binary.py --workdir /tmp/lelp_digits

Seeds and methods from the command line:
  lelp run --config configs/digits_binary.py --workdir /tmp/lelp_digits \
      --methods ce,kd,lelp,lelp_kmeans,random,pca --seeds 0,1,2

Smoke test (seconds): add --config.smoke=true.

Runtime: a few minutes on a 2-core CPU (the teacher and 18 student runs of 1,500 steps);
the smoke run well under a minute. No figures are quoted here: its 185 test images leave
about ±1.5 points of noise per seed, too coarse to order the methods. For digits measured
with resolution (all 1,797 images scored by k-fold, settings chosen on validation, paired
95 % intervals) see docs/RESULTS.md (`lelp kfold --config configs/digits_kfold.py`).
"""
from lelp_jax.config import base_config


def get_config():
    c = base_config()
    c.name = "digits_binary"
    c.data.name = "digits_binary"
    c.data.eval_batch_size = 512

    c.teacher.model = "mlp"
    c.teacher.model_kwargs.hidden = (256, 256)
    c.teacher.train.num_steps = 1500
    c.teacher.train.batch_size = 64
    c.teacher.train.learning_rate = 1e-3
    c.teacher.train.eval_every = 250

    c.student.model = "mlp"
    c.student.model_kwargs.hidden = (8,)

    c.lelp.num_subclasses = 5
    c.lelp.beta = 1.0
    c.lelp.tau = 2.0
    c.kd.tau = 2.0

    c.train.num_steps = 1500
    c.train.batch_size = 64
    c.train.learning_rate = 3e-3
    c.train.eval_every = 250

    c.methods = ("ce", "kd", "lelp", "lelp_kmeans", "random", "pca")
    c.seeds = (0, 1, 2)
    return c
