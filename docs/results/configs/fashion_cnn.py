r"""Fashion-MNIST 0-4 vs 5-9, CNN teacher -> small CNN student, students on 20k images.

configs/fashion_mnist_binary.py (teacher small_cnn conv 32/64 + dense 128, student
small_cnn conv 8/16 + dense 32) with: the students' training set capped at the
first 20,000 images (2-core CPU budget; validation 5,000 and test 10,000 stay
whole), 4 epochs (cosine to 0, validation every epoch), cached teacher outputs.
The teacher is trained separately on the full 55,000 (2 epochs) and loaded:

  lelp teacher --config configs/fashion_mnist_binary.py --workdir /work/results/fashion_teacher_cnn \
      --config.teacher.train.num_epochs=2 --config.teacher.train.eval_every=430 \
      --config.teacher.train.checkpoint_every=430
  lelp run --config docs/results/configs/fashion_cnn.py --workdir /work/results/fashion_cnn \
      --config.teacher.checkpoint=/work/results/fashion_teacher_cnn --methods ce,kd,lelp,random --seeds 0,1,2

Why not the ResNet teacher of fashion_resnet.py: ResNet-8 for 3 epochs on the
20k images took 922 s here and reached 92.8% test, *below* the student trained
with hard labels alone (93.5% test after 8 epochs), so it had nothing to teach.
"""
from lelp_jax.config import config_from_file


def get_config():
    c = config_from_file("fashion_mnist_binary")
    c.name = "fashion_mnist_binary_cnn"
    c.data.max_examples_per_split = 20000  # students: first 20k of the 55k train images
    c.teacher_cache = True
    c.train.num_epochs = 4.0
    c.train.eval_every = 157  # one epoch of 20k at batch 128
    c.train.checkpoint_every = 314
    c.methods = ("ce", "kd", "lelp", "random")
    c.seeds = (0, 1, 2)
    return c
