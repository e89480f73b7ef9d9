"""Models and training data brought into the workflow: a Hub repository at a pinned commit or a
local folder, each with a manifest of what arrived (`hub`, `selection`, `transfer`), and a
dataset's rows read, sampled by a rule, checked the way LLaMA-Factory reads them and registered
(`rows`, `sampling`, `checks`, `datasets`). ``python -m shadowft.data`` is the rules' command line.
"""

from shadowft.exports import public_names

__all__, __getattr__, __dir__ = public_names(
    __name__,
    {
        "hub": ["download_dataset", "download_model", "fetch_dataset", "fetch_model", "link_local_model"],
        "datasets": ["prepare_dataset"],
        "rows": ["DatasetFormatError"],
        "selection": ["DatasetSourceError", "ModelSourceError"],
        "transfer": ["HubError"],
    },
)
