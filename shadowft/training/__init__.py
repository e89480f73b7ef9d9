"""Fine-tuning with LLaMA-Factory: a run's arguments as data, checked against the installed
LLaMA-Factory (`arguments`), the run itself, resumable, and the LoRA export (`llamafactory`), how a
job spreads over GPUs and nodes (`launch`), and how large a job must be (`resources`).
``python -m shadowft.training`` is the rules' command line, in the train environment.
"""

from shadowft.exports import public_names

__all__, __getattr__, __dir__ = public_names(
    __name__,
    {
        "arguments": ["PAPER_DEFAULTS", "UnknownArgumentError", "training_arguments", "write_checked_config"],
        "llamafactory": ["export_merged", "run_training"],
        "launch": ["Launch"],
        "resources": ["JobResources", "Node", "SizingError", "Workload", "count_parameters", "size_job"],
    },
)
