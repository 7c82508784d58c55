"""Package definition for lxmert-jax.

Each lower bound is the oldest release that has what the code calls and that
installs and runs beside the other lower bounds; the comment names what pins
it. Bounds marked "oldest checked" were run at that version but not bisected
further down.
"""

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
    # jax>=0.8.1 and grain>=0.2.17 require Python 3.11.
    python_requires=">=3.11",
    packages=find_packages(include=["lxmert_jax", "lxmert_jax.*"]),
    package_data={"lxmert_jax": ["assets/*.txt"]},
    include_package_data=True,
    install_requires=[
        # Top-level jax.set_mesh is 0.7.1 (0.7.0 has only jax.sharding.set_mesh;
        # jax.P is 0.7.0). XLA:CPU runs the bfloat16 x bfloat16 -> float32 dots of
        # model.dtype=bfloat16 only from jaxlib 0.8.1 ("Unsupported element type
        # for DotThunk" before), and the test suite runs on CPU.
        "jax>=0.8.1",
        # Linen's with_logical_partitioning, get_partition_spec and
        # LayerNorm(use_fast_variance=) are older; 0.9 fails under jax>=0.7's
        # tracing ('DynamicJaxprTrace' object has no attribute 'level').
        "flax>=0.10.0",
        # optax.tree.norm (the optax.tree namespace is new in 0.2.5).
        "optax>=0.2.5",
        # CheckpointManagerOptions(preservation_policy=), BestN(
        # keep_checkpoints_without_metrics=) are 0.11.15; 0.11.15-16 still import
        # jax.experimental.layout.DeviceLocalLayout, which jax>=0.7 removed.
        "orbax-checkpoint>=0.11.17",
        # jax>=0.8.1 requires numpy 2.
        "numpy>=2.0",
        "sentencepiece>=0.2.0",  # oldest checked
        "tokenizers>=0.19",  # oldest checked
        # Building a dataset without TensorFlow: before 4.9.8 the builder looks
        # up gs://tfds-data and fails without TensorFlow or gcsfs.
        # (ExampleWriter and the _example_writer hook are 4.9.5.)
        "tensorflow-datasets>=4.9.8",
        # grain>=0.2.17 requires it; ArrayRecordWriter with options is older.
        "array-record>=0.8.1",
        # grain.transforms.Batch hands enable_shared_memory_output on to its
        # batch_fn from 0.2.17 (batch_fn itself is 0.2.13, top-level `import
        # grain` 0.2.6, ReadOptions(num_threads=0) 0.2.10).
        "grain>=0.2.17",
        # epath's hf:// backend (named in paths.resolve's error), from 1.12.0.
        "etils[epath]>=1.12.0",
        # config_flags.DEFINE_config_file and ConfigDict are in the first release.
        "ml-collections>=0.1.1",
        "absl-py>=2.1",  # oldest checked
        "tqdm>=4.66",  # oldest checked
        # 2.6 pins protobuf<4, which grain's protobuf>=5.28.3 excludes.
        "tensorboardX>=2.6.1",
        # The first release whose wheels support numpy 2 (3.8.0-3.8.3 need numpy<2).
        "matplotlib>=3.8.4",
    ],
    extras_require={
        "torch": ["torch>=2.1", "transformers>=4.40", "safetensors>=0.4"],
        "test": [
            "pytest>=8.0",
            # Two test processes: the suite is mostly single-threaded XLA
            # compiles, so 2 cores run it in about 2/3 of the serial time.
            "pytest-xdist>=3.5",
            # Only the tests import chex; optax>=0.2.5 needs chex>=0.1.87.
            "chex>=0.1.87",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
        ],
    },
)
