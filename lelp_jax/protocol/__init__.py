"""The experiment protocol (docs/PROTOCOL.md): grids, sweeps, k-fold, selection on validation, paired statistics.

:mod:`~lelp_jax.protocol.grids` (per-method grids of equal size), :mod:`~lelp_jax.protocol.sweep`
(``lelp sweep``), :mod:`~lelp_jax.protocol.kfold` (``lelp kfold``), :mod:`~lelp_jax.protocol.selection`
(settings chosen on validation) and :mod:`~lelp_jax.protocol.paired` (mean ± std, paired intervals).
"""
