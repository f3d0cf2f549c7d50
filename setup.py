"""vlm_jax: video-language models in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="vlm_jax",
    version="0.1.0",
    description="Video-language models in JAX/Flax: encoders, fusion, pretraining, retrieval, captioning and QA.",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["vlm_jax", "vlm_jax.*"]),
    package_data={"vlm_jax.data": ["assets/*"]},
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "grain==0.2.18",
        "ml-collections==1.1.0",
        "tensorflow-datasets==4.9.10",
        "array-record==0.8.6",
        "chex==0.1.92",
        "einops==0.8.2",
        "numpy==2.4.6",
        "tokenizers==0.23.3",
        "safetensors==0.8.0",
        "av==18.1.0",
        "pillow==13.0.0",
        "matplotlib==3.11.2",
        "tqdm==4.70.1",
        "tensorboardX==2.6.5",
        "absl-py==2.5.1",
        "importlib-resources==7.1.0",  # tensorflow_datasets needs it without TensorFlow
    ],
    extras_require={
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "portpicker==1.6.0"],
        # Reference implementations for the converters' parity checks and `vlm convert --verify`.
        # Install torch==2.13.0 first: it is the local CPU build (scripts/setup_env.sh does).
        "pretrained": ["torch==2.13.0", "transformers==5.24.0", "sentence-transformers==6.2.0"],
        # Peers for `vlm bench`.
        "bench": ["torch==2.13.0", "transformers==5.24.0", "sentence-transformers==6.2.0", "faiss-cpu==1.15.1"],
    },
    entry_points={"console_scripts": ["vlm=vlm_jax.cli:main"]},
)
