"""Maps the folder `kernels/` to the import package `tokrl_kernels`.

A top-level package named `kernels` would collide with Hugging Face's `kernels` distribution (which
transformers probes for), so the folder keeps the promised layout while the import name is unique.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["tokrl", "tokrl.*"]) + ["tokrl_kernels"],
    package_dir={"tokrl_kernels": "kernels"},
    include_package_data=True,
)
