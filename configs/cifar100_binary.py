r"""CIFAR-100bin: the paper's vision setting (even vs odd fine class), ResNet-56 teacher.

Coarse label = fine class parity (50 fine classes per side); fine labels are
kept, so the `oracle` method can be added with --methods. Teacher: CIFAR
ResNet-56 (855k params). Student: small_cnn conv 8/16 + dense 32 (34k params,
25x fewer).

Needs a prepared tfds copy of cifar100 (nothing downloads at run time): on a
machine with network and TensorFlow run
  tfds build cifar100 --data_dir=DIR --file_format=array_record
copy DIR here and pass --config.data.data_dir=DIR (or set LELP_DATA_DIR).
Splits: train = first 45,000 of tfds train, validation = last 5,000, test = tfds test.

Command:
  lelp run --config configs/cifar100_binary.py --workdir /tmp/lelp_c100 --config.data.data_dir=DIR

Runtime (estimates): days on a 2-core CPU (do not); about 1-2 hours on one
GPU/TPU chip (teacher 100 epochs, bfloat16), students a few minutes each.
"""
from lelp_jax.config import base_config


def get_config():
    c = base_config()
    c.name = "cifar100_binary"
    c.data.name = "cifar100_binary"
    c.data.eval_batch_size = 1000

    c.teacher.model = "resnet"
    c.teacher.model_kwargs = dict(depth=56)
    c.teacher.train.num_epochs = 100.0
    c.teacher.train.batch_size = 128
    c.teacher.train.optimizer = "sgd"
    c.teacher.train.momentum = 0.9
    c.teacher.train.nesterov = True
    c.teacher.train.learning_rate = 0.1
    c.teacher.train.weight_decay = 5e-4
    c.teacher.train.warmup_steps = 500
    c.teacher.train.eval_every = 2000
    c.teacher.train.checkpoint_every = 2000
    c.teacher.train.compute_dtype = "bfloat16"

    c.student.model = "small_cnn"
    c.student.model_kwargs = dict(conv_features=(8, 16), hidden=(32,))

    c.lelp.num_subclasses = 10
    c.lelp.beta = 1.0
    c.lelp.tau = 1.0
    c.kd.tau = 2.0

    c.train.num_epochs = 60.0
    c.train.batch_size = 128
    c.train.learning_rate = 3e-3
    c.train.eval_every = 2000
    c.train.checkpoint_every = 2000

    c.methods = ("ce", "kd", "lelp", "random", "pca")  # + oracle: --methods ce,kd,lelp,random,pca,oracle
    c.seeds = (0, 1, 2)
    return c
