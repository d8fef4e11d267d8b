"""The experiment as resumable stages with artifacts in a workdir.

One module per concern, arrows running down this list:

- :mod:`~lelp_jax.pipeline.workdir`: where each artifact lives (``Workdir``, ``LAYOUT``), which config
  owns a workdir, the identity of teacher-derived artifacts shared across workdirs.
- :mod:`~lelp_jax.pipeline.context`: the ``Run`` of one command (config, workdir, mesh, data splits,
  the teacher, its outputs and head, each built once), pre-flight checks, teacher training.
- :mod:`~lelp_jax.pipeline.fits`: the registry of fit kinds (``register_fit``): each method's ``aux``.
- :mod:`~lelp_jax.pipeline.stages`: teacher, teacher_outputs, statistics, fit, distill, eval.
- :mod:`~lelp_jax.pipeline.run`: the driver (``run_stages``, ``run_all``).

Everything below is importable from ``lelp_jax.pipeline`` itself.
"""
from lelp_jax.runtime.errors import ConfigError
from lelp_jax.data.splits import SubsetSource
from lelp_jax.pipeline.context import PRETRAINED, Run, preflight
from lelp_jax.pipeline.fits import (FITS, FitInputs, build_fit, calibrate, calibrate_fit, load_statistics,
                                    method_aux, register_fit, split_diagnostics, workdir_inputs)
from lelp_jax.pipeline.run import run_all, run_stages
from lelp_jax.pipeline.stages import (STAGES, stage_distill, stage_eval, stage_fit, stage_statistics,
                                      stage_teacher, stage_teacher_outputs, summarize)
from lelp_jax.pipeline.workdir import (LAYOUT, Workdir, WorkdirError, artifact_parts, check_workdir,
                                       init_workdir, is_main_process, read_json)

__all__ = [
    "ConfigError",
    "WorkdirError",
    "Workdir",
    "LAYOUT",
    "Run",
    "SubsetSource",
    "STAGES",
    "PRETRAINED",
    "FITS",
    "FitInputs",
    "register_fit",
    "build_fit",
    "calibrate_fit",
    "workdir_inputs",
    "check_workdir",
    "init_workdir",
    "preflight",
    "load_statistics",
    "method_aux",
    "calibrate",
    "artifact_parts",
    "split_diagnostics",
    "stage_teacher",
    "stage_teacher_outputs",
    "stage_statistics",
    "stage_fit",
    "stage_distill",
    "stage_eval",
    "run_stages",
    "run_all",
    "summarize",
    "read_json",
    "is_main_process",
]
