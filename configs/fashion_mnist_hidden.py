r"""Fashion-MNIST regrouped 5 + 5 with few images per fine class: hidden structure chosen by the oracle - ce gap.

The ten Fashion-MNIST classes are regrouped into two classes of five
(data.class_one_fine, lelp_jax/data/regroup.py) and the training set keeps only the
first n images of each fine class (data.train_per_fine_class); validation (5,000) and
test (10,000 images) stay whole. The grouping and n were chosen *only* by the gap
oracle - ce they leave (ce and oracle students, one seed, validation accuracy; never LELP
or KD); one student (CNN conv 4/8 + dense 16) was tried, no student search for lack of
CPU time. The search and its table are in docs/RESULTS.md. The teacher (CNN
conv 32/64 + dense 128) is trained on the binary labels of the same small training set
only; the fine labels reach only the `oracle` method.

Search (ce and oracle only, seed 0, one teacher per point; the largest *validation* gap
wins; table in docs/RESULTS.md section 4): groupings 0-4 vs 5-9 and the seeded random
5 + 5 splits {2,3,4,6,7} and {0,1,4,7,8}, 50 and 500 training images per fine class:
  lelp run --config configs/fashion_mnist_hidden.py --workdir /tmp/fm_g01478 \
      --config.data.class_one_fine=[0,1,4,7,8] --config.data.train_per_fine_class=50 --methods ce,oracle --seeds 0
(one such run per point). The kept setting, {0,1,4,7,8} with 50 images per fine class, left
oracle - ce = +1.76 on validation (+2.49 on test); the teacher is at 84.5 % there.

Command:
  lelp run --config configs/fashion_mnist_hidden.py --workdir /tmp/lelp_fashion_hidden

Runtime (measured, load average 7-10 on 2 cores): a search point (teacher 800 steps + ce +
oracle) 1-5 minutes of wall time; the comparison (teacher reused, 30 student runs of 7-13 s)
341 s.
"""
from lelp_jax.config import base_config
from lelp_jax.protocol.grids import set_grid_axis


def get_config():
    c = base_config()
    c.name = "fashion_mnist_hidden"
    c.data.name = "fashion_mnist_binary"
    c.data.class_one_fine = (0, 1, 4, 7, 8)  # t-shirt, trouser, coat, sneaker, bag vs the rest
    c.data.train_per_fine_class = 50
    c.data.eval_batch_size = 1000

    c.teacher.model = "small_cnn"
    c.teacher.model_kwargs = dict(conv_features=(32, 64), hidden=(128,))
    c.teacher.train.num_steps = 800
    c.teacher.train.batch_size = 64
    c.teacher.train.learning_rate = 1e-3
    c.teacher.train.eval_every = 200
    c.teacher.train.checkpoint_every = 800
    c.teacher_cache = True

    c.student.model = "small_cnn"
    c.student.model_kwargs = dict(conv_features=(4, 8), hidden=(16,))

    c.lelp.num_subclasses = 5
    # Selection grids (lelp sweep --default-grids) try S = 3 and 5: each side holds five fine classes.
    set_grid_axis(c, "lelp.num_subclasses", (3, 5))
    set_grid_axis(c, "subclass.num_subclasses", (3, 5))
    c.lelp.standardize = True
    c.lelp.tau = 2.0
    c.kd.tau = 2.0

    c.train.num_steps = 600
    c.train.batch_size = 64
    c.train.learning_rate = 3e-3
    c.train.eval_every = 200
    c.train.checkpoint_every = 600

    c.methods = ("ce", "kd", "lelp", "kmeans", "oracle")
    c.seeds = (0, 1, 2, 3, 4)
    return c
