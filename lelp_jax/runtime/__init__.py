"""The runtime: what every layer above the core leans on to run safely on one host or a pod.

:mod:`~lelp_jax.runtime.errors` (the errors the CLI prints as one line), :mod:`~lelp_jax.runtime.store`
(content-addressed artifacts), :mod:`~lelp_jax.runtime.progress` (progress lines of long loops) and
:mod:`~lelp_jax.runtime.sharding` (mesh, batch and parameter sharding, multi-host start-up).
"""
