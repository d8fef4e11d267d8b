"""Packaging beyond setup.cfg: the wheel also carries configs/ as ``lelp_jax/_configs`` so an
installed copy (no checkout) finds ``--config digits_binary`` (lelp_jax.config.resolve_config_path)."""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["lelp_jax*"]) + ["lelp_jax._configs"],
      package_dir={"lelp_jax._configs": "configs"})
