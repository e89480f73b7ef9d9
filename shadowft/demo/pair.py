"""How the demo pair is made by LLaMA-Factory, step by step: BASE pre-trained from the random
initial model on the corpus, INSTRUCT tuned from BASE on the chat set. Each step's arguments are
a training run's (shadowft.training.arguments) with the demo's own overrides.
"""

from __future__ import annotations

import os
from typing import Any

from shadowft.demo.build import CHAT_DATASET, CORPUS_DATASET, DEFAULT_SYSTEM, TEMPLATE
from shadowft.training.arguments import RUN_DEFAULTS, training_arguments

# On 2 CPU cores: each call trains for seconds. INSTRUCT must
# know its chat skills whatever the seed (its held-out score is the benchmark of what tuning
# keeps): 3 epochs at 1e-3 reach 99-100 on seeds 0-2 (with the corpus of shadowft.demo.build), where
# 3 epochs at 3e-4 gave 50-100 and 1 epoch 16. The price is a pair further apart than real ones
# (sigma 12.4-13.7%; the paper's under 2%, Qwen3-4B 5.6%). bf16 is off: CPUs emulate it slowly.
_COMMON: dict[str, Any] = {
    "bf16": False,
    "default_system": DEFAULT_SYSTEM,
    "cutoff_len": 128,
    "per_device_train_batch_size": 16,
    "gradient_accumulation_steps": 1,
    "warmup_ratio": 0.05,
    "logging_steps": 10,
    "save_steps": 50,
}
STEP_OVERRIDES: dict[str, dict[str, Any]] = {
    # Packed into 64-token blocks: short documents, twice the optimizer steps per token.
    "pretrain": {**_COMMON, "cutoff_len": 64, "num_train_epochs": 3.0, "learning_rate": 3.0e-3},
    "instruct": {**_COMMON, "num_train_epochs": 3.0, "learning_rate": 1.0e-3},
}
# How the demo pair is made, step by step: (stage, tuning, dataset) for `step_arguments`.
STEPS: dict[str, tuple[str, str, str]] = {
    "pretrain": ("pt", "full", CORPUS_DATASET),
    "instruct": ("sft", "full", CHAT_DATASET),
}


def step_arguments(
    step: str,
    *,
    model_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    seed: int = RUN_DEFAULTS["seed"],
) -> dict[str, Any]:
    """Arguments of one step that makes the demo pair: "pretrain" (init -> BASE), "instruct" (BASE -> INSTRUCT)."""
    stage, tuning, dataset = STEPS[step]
    return training_arguments(
        model_dir=model_dir,
        dataset_dir=dataset_dir,
        dataset=dataset,
        template=TEMPLATE,
        tuning=tuning,
        output_dir=output_dir,
        stage=stage,
        overrides=STEP_OVERRIDES[step],
        seed=seed,
    )
