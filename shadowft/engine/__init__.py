"""The delta engine, the floor above the package's standard-library ground (shadowft.io):
safetensors checkpoints read and written in bounded memory, an update (a full model's difference
or a LoRA adapter) extracted and grafted with exact arithmetic, and the paper's sigma. It knows
nothing of workflows: the `shadowft` command and the workflow's rules both call it.

    W_shadow = W_instruct + alpha * Delta

Bottom to top: what files and tensor names mean (`layout`, `dtypes`, `tensors`), reading
(`reader`, `pickled`) and writing (`writer`), the arithmetic (`numerics`, `kernels`), threads
(`parallel`) and input hashes (`provenance`); then what a delta is (`policy`, `parts`, `adapters`,
`deltaformat`, `options`), the one streaming skeleton (`streaming`), and the operations:
`extraction`, `grafting`, `sigma`, `overlap`, `lowrank`, `preflight`. docs/architecture.md walks one graft.
"""

from shadowft.exports import public_names

__all__, __getattr__, __dir__ = public_names(
    __name__,
    {
        "reader": ["Checkpoint"],
        "tensors": ["TensorInfo"],
        "writer": ["SafetensorsWriter"],
        "layout": ["CheckpointError", "DeltaError", "VOCAB_POLICIES"],
        "policy": ["PRESETS", "Action", "Selection"],
        "options": ["DeltaOptions"],
        "extraction": ["Delta", "ExtractOptions", "extract_delta"],
        "grafting": ["GraftOptions", "graft"],
        "sigma": ["similarity"],
        "overlap": ["Updates", "measure_overlap"],
        "lowrank": ["delta_to_lora"],
        "preflight": ["PreflightError", "check_pair", "write_pair_check"],
    },
)
