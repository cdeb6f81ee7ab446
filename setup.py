"""megatron-glm: pretrain GLM-family models (GLM-Base 110M .. GLM-130B) on megatron-core.

torch is deliberately not an install requirement: on GPU clusters it comes from NVIDIA's PyTorch
container and must not be replaced; on CPU machines requirements/cpu.txt pins torch==2.13.0.
"""

from setuptools import find_packages, setup

setup(
    name="megatron-glm",
    version="0.1.0",
    description="GLM-130B-style pretraining (DeepNorm, RoPE, GeGLU, blank infilling) on megatron-core",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_glm*", "data_prep*", "launch*", "checkpoints*"]),
    package_data={"megatron_glm": ["config/presets/*/*.yaml", "monitor/static/*", "evaluation/demo_tasks/*.yaml",
                                   "evaluation/demo_tasks/data/*/*/*.jsonl"], "launch": ["clusters/*.yaml"]},
    install_requires=[
        "megatron-core==0.16.1",
        "numpy>=1.24",
        "PyYAML>=6.0",
        "sentencepiece>=0.2",
        "psutil>=5.9",
        "tqdm>=4.60",
        "zstandard>=0.22",
        "tensorboard>=2.10",
        "safetensors>=0.4",
    ],
    extras_require={
        "cpu": ["torch==2.13.0"],
        "test": ["pytest>=8", "pytest-timeout>=2.3"],
        "lm-eval": ["lm-eval==0.4.13"],
    },
    entry_points={
        "console_scripts": [
            "glm-train=megatron_glm.cli.train:main",
            "glm-prep=data_prep.cli:main",
            "glm-launch=launch.cli:main",
            "glm-ckpt=checkpoints.cli:main",
            "glm-monitor=megatron_glm.monitor.cli:main",
            "glm-generate=megatron_glm.cli.generate:main",
            "glm-eval=megatron_glm.cli.evaluate:main",
        ]
    },
)
