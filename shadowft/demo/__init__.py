"""The embedded demo: a tiny base/instruct pair and a synthetic task, made on the spot so that the
whole workflow runs on 2 CPU cores without a network. `build` writes the initial model and the
datasets; `pair` holds the LLaMA-Factory steps that make BASE and INSTRUCT from them.
``python -m shadowft.demo`` is the rules' command line.
"""

from shadowft.exports import public_names

__all__, __getattr__, __dir__ = public_names(
    __name__,
    {
        "build": ["DATASETS", "DEFAULT_SYSTEM", "TEMPLATE", "build_demo"],
        "pair": ["STEPS", "step_arguments"],
    },
)
