r"""Bring your own text classification CSV (or JSONL): MiniLM teacher, small student.

Give the files on the command line (columns `text` and `label` by default; labels
may be strings, mapped to class ids in sorted order unless data.class_names is set):

  lelp run --config configs/text_csv.py --workdir /tmp/lelp_mine \
      --config.data.files.train=train.csv --config.data.files.test=test.csv

Optional: --config.data.files.validation=val.csv (else a seeded 10% of train is held
out, --config.data.val_fraction), --config.data.text_column=review
--config.data.label_column=stars, --config.data.dataset_name=my_reviews.

Teacher: all-MiniLM-L6-v2 fine-tuned (teacher.train.num_epochs), outputs cached;
student: embedding_bag over the same token ids (see configs/rotten_tomatoes.py
for why the cache is the teacher's side only).

Runtime: depends on the data; about 1 minute per 1,000 training snippets on a
2-core CPU for the teacher epoch (estimate), seconds per student run; one
accelerator is about 20x faster (estimate).
"""
from lelp_jax.config import base_config, minilm_text_setup


def get_config():
    c = base_config()
    c.name = "text_csv"
    c.data.name = "local"
    c.data.dataset_name = "text_csv"
    c.data.files = dict(train="", validation="", test="")  # set train and test; validation optional
    c.data.text_column = "text"
    c.data.label_column = "label"
    c.data.max_length = 64
    c.data.bucket_lengths = (16, 32, 64)
    c.data.eval_batch_size = 128

    minilm_text_setup(c, warmup_steps=30, eval_every=100)
    c.teacher.train.num_epochs = 1.0

    c.lelp.num_subclasses = 4
    c.train.num_epochs = 5.0
    c.train.batch_size = 64
    c.train.learning_rate = 2e-3
    c.train.eval_every = 200

    c.methods = ("ce", "kd", "lelp", "lelp_kmeans")
    c.seeds = (0, 1, 2)
    return c
