r"""Fashion-MNIST 0-4 vs 5-9 with CNNs: ce, kd, lelp and its random/pca ablations.

Coarse label = fine class >= 5 (the paper's CIFAR-100bin recipe on Fashion-MNIST);
the fine label is kept, so the `oracle` method (true fine classes as subclasses,
the upper bound of the paper's Figure 3) can be added with --methods. Teacher: small_cnn conv 32/64 + dense
128 (421k params, about 95% test). Student: small_cnn conv 8/16 + dense 32 (26k
params, 16x fewer). Data: the Debian package `dataset-fashion-mnist`
(`apt-get install dataset-fashion-mnist`), read offline.

Command:
  lelp run --config configs/fashion_mnist_binary.py --workdir /tmp/lelp_fashion

Smoke test: add --config.smoke=true (measured: 120 s for ce, kd, lelp on a loaded
2-core machine; teacher 91% on the 256-image smoke split).

Runtime (estimates): about 60-90 minutes on a 2-core CPU (teacher 3 epochs, then
5 methods x 2 seeds x 4 epochs); about 5 minutes on one GPU/TPU chip.
"""
from lelp_jax.config import base_config


def get_config():
    c = base_config()
    c.name = "fashion_mnist_binary"
    c.data.name = "fashion_mnist_binary"
    c.data.eval_batch_size = 512

    c.teacher.model = "small_cnn"
    c.teacher.model_kwargs = dict(conv_features=(32, 64), hidden=(128,))
    c.teacher.train.num_epochs = 3.0
    c.teacher.train.batch_size = 128
    c.teacher.train.learning_rate = 1e-3
    c.teacher.train.eval_every = 500
    c.teacher.train.checkpoint_every = 500

    c.student.model = "small_cnn"
    c.student.model_kwargs = dict(conv_features=(8, 16), hidden=(32,))

    c.lelp.num_subclasses = 5
    c.lelp.beta = 1.0
    c.lelp.tau = 1.0
    c.kd.tau = 1.0

    c.train.num_epochs = 4.0
    c.train.batch_size = 128
    c.train.learning_rate = 3e-3
    c.train.eval_every = 500
    c.train.checkpoint_every = 500

    c.methods = ("ce", "kd", "lelp", "random", "pca")  # + oracle: --methods ce,kd,lelp,random,pca,oracle
    c.seeds = (0, 1)
    return c
