r"""Amazon US Reviews (Books), 5-way star rating: the paper's few-class NLP setting.

Needs a prepared tfds copy (nothing downloads at run time): on a machine with
network and TensorFlow run
  tfds build amazon_us_reviews/Books_v1_02 --data_dir=DIR --file_format=array_record
copy DIR here and pass --config.data.data_dir=DIR (or set LELP_DATA_DIR). Another
category: --config.data.tfds_config=Electronics_v1_00. Splits (of tfds train):
80% train, 10% validation, 10% test.

Teacher: all-MiniLM-L6-v2 fine-tuned, outputs cached; student: embedding_bag.
With C = 5 classes, S = 4 gives a 20-way student head.

Command:
  lelp run --config configs/amazon_reviews.py --workdir /tmp/lelp_amazon --config.data.data_dir=DIR

Runtime (estimates): many hours on a 2-core CPU (millions of reviews; use an
accelerator); about 1 hour on one GPU/TPU chip.
"""
from lelp_jax.config import base_config, minilm_text_setup


def get_config():
    c = base_config()
    c.name = "amazon_reviews"
    c.data.name = "amazon_us_reviews"
    c.data.tfds_config = "Books_v1_02"
    c.data.max_length = 128
    c.data.eval_batch_size = 512

    minilm_text_setup(c, warmup_steps=300, eval_every=2000)
    c.teacher.train.num_steps = 10000
    c.teacher.train.checkpoint_every = 2000

    c.lelp.num_subclasses = 4
    c.train.num_steps = 30000
    c.train.batch_size = 256
    c.train.learning_rate = 2e-3
    c.train.eval_every = 3000
    c.train.checkpoint_every = 3000

    c.methods = ("ce", "kd", "lelp", "lelp_kmeans", "random", "pca")
    c.seeds = (0, 1, 2)
    return c
