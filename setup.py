"""Package definition for lxmert-jax."""

import pathlib

from setuptools import find_packages, setup

README = pathlib.Path(__file__).parent / "README.md"

setup(
    name="lxmert-jax",
    version="0.1.0",
    description="LXMERT (Tan & Bansal, 2019) in JAX/Flax: model, conversion, data and training.",
    long_description=README.read_text(encoding="utf-8") if README.exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["lxmert_jax", "lxmert_jax.*"]),
    package_data={"lxmert_jax": ["assets/*.txt"]},
    include_package_data=True,
    install_requires=[
        "jax>=0.6.0",
        "flax>=0.10.4",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "chex>=0.1.88",
        "ml-collections>=0.1.1",
        "numpy>=1.26",
        "sentencepiece>=0.2.0",
        "tokenizers>=0.19",
        "tensorflow-datasets>=4.9.7",
        "array-record>=0.7.0",
        "grain>=0.2.10",
        "absl-py>=2.1",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
    ],
    extras_require={
        "torch": ["torch>=2.1", "transformers>=4.40", "safetensors>=0.4"],
        "test": [
            "pytest>=8.0",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
        ],
    },
)
