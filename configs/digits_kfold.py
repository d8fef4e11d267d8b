r"""digits_binary by 3-fold cross-validation: every one of the 1,797 images is tested once per seed.

configs/digits_binary.py (teacher MLP 64 -> 256 -> 256 -> 2, student MLP 64 -> 8 -> C*S)
with data.num_folds = 3 (lelp_jax/data/folds.py): the three fixed splits are pooled,
dealt into 3 folds stratified on the digit (seeded), and fold f (599 images) is tested
by a teacher and students trained without it (validation: a stratified 10 % of the
other two folds, about 116 images; train about 1,082). `lelp kfold` runs the three
folds and pools their test sets into one accuracy over 1,797 images per method and seed
(WORKDIR/kfold.json). The split is standardised (lelp.standardize), and steps are
shortened from digits_binary's 1,500 (teacher 1,000, students 800) and three folds (not five or ten) to keep
the whole affordable on 2 shared cores.

Command:
  lelp kfold --config configs/digits_kfold.py --workdir /tmp/lelp_digits_kfold \
      --methods ce,kd,lelp,oracle --seeds 0,1,2,3,4
One fold alone (what `lelp kfold` runs in WORKDIR/fold_3):
  lelp run --config configs/digits_kfold.py --workdir /tmp/lelp_digits_fold3 --config.data.fold=3

Runtime (measured): the command above took 2,564 s of wall time on 2 cores at load
average 15-23 (three teachers of 36-71 s, 60 student runs of 15-78 s each); the process got
about 10 % of a core (2 min 50 s of CPU in its first 28 minutes), so a quiet 2-core machine
needs a few minutes. Result (docs/RESULTS.md, section 2): pooled over 1,797 images, ce 93.37,
kd 91.84, lelp 91.92, oracle 94.78 (means over seeds 0-4).
"""
from lelp_jax.config import config_from_file


def get_config():
    c = config_from_file("digits_binary")
    c.name = "digits_kfold"
    c.data.num_folds = 3
    c.teacher.train.num_steps = 1000
    c.teacher_cache = True
    c.lelp.standardize = True
    c.train.num_steps = 800
    c.train.eval_every = 200
    c.train.checkpoint_every = 800
    c.methods = ("ce", "kd", "lelp", "oracle")
    c.seeds = (0, 1, 2, 3, 4)
    return c
