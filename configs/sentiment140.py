r"""Sentiment140 (tweets, negative vs positive), the paper's first NLP setting.

Needs a prepared tfds copy (nothing downloads at run time): on a machine with
network and TensorFlow run
  tfds build sentiment140 --data_dir=DIR --file_format=array_record
copy DIR here and pass --config.data.data_dir=DIR (or set LELP_DATA_DIR).
Splits: train = first 95% of tfds train, validation = last 5%, test = tfds test
(359 tweets; the paper's test set).

Teacher: all-MiniLM-L6-v2 fine-tuned (0.1 epoch of 1.6M tweets = 5,000 steps of
32), outputs cached; student: embedding_bag (64-d) over the same token ids.

Command:
  lelp run --config configs/sentiment140.py --workdir /tmp/lelp_s140 --config.data.data_dir=DIR

Runtime (estimates): about 10 hours on a 2-core CPU (the teacher cache over 1.5M
tweets dominates; cap it with --config.data.max_examples_per_split is not
available for catalogue data, use a GPU/TPU); about 30 minutes on one accelerator.
"""
from lelp_jax.config import base_config, minilm_text_setup


def get_config():
    c = base_config()
    c.name = "sentiment140"
    c.data.name = "sentiment140"
    c.data.max_length = 64
    c.data.bucket_lengths = (16, 32, 64)
    c.data.eval_batch_size = 512

    minilm_text_setup(c, warmup_steps=200, eval_every=1000)
    c.teacher.train.num_steps = 5000
    c.teacher.train.checkpoint_every = 1000

    c.lelp.num_subclasses = 4
    c.train.num_steps = 20000
    c.train.batch_size = 256
    c.train.learning_rate = 2e-3
    c.train.eval_every = 2000
    c.train.checkpoint_every = 2000

    c.methods = ("ce", "kd", "lelp", "lelp_kmeans", "random", "pca")
    c.seeds = (0, 1, 2)
    return c
