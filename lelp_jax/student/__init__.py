"""Ship the student: the self-contained bundle, `lelp export`, `lelp predict`, `load_student`.

:mod:`~lelp_jax.student.bundle` (the format, :func:`load_student`; imports only the models and the data
layer's tokenizer, never the training pipeline), :mod:`~lelp_jax.student.export` (a workdir's run chosen on
validation, written as a bundle with its model card) and :mod:`~lelp_jax.student.predict` (``lelp predict``).
"""
from lelp_jax.student.bundle import FORMAT_VERSION, Student, class_probabilities, load_student

__all__ = ["FORMAT_VERSION", "Student", "class_probabilities", "load_student"]
