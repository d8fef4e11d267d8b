"""Thin wrapper kept for old commands: the exporter ships in the package as ``lelp export-teacher``
(:mod:`lelp_jax.pipeline.export_teacher`, which documents it)."""
from lelp_jax.pipeline.export_teacher import *  # noqa: F401,F403
from lelp_jax.pipeline.export_teacher import main

if __name__ == "__main__":
    raise SystemExit(main())
