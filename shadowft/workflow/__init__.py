"""What the Snakemake workflow plans, as code the tests reach: the experiment config validated
against its schema (`config`, `yamlfile`), model families (`families`), runs and variants and
their names in paths (`sweep`), every path and value the rules look up (`plan`) and how large each
job is (`sizing`). The Snakefile and rules/*.smk only adapt these to Snakemake.
"""

from shadowft.exports import public_names

__all__, __getattr__, __dir__ = public_names(
    __name__,
    {
        "config": ["ConfigError", "validate_config"],
        "sweep": ["Run", "Variant", "VariantKind", "runs", "variants"],
        "families": ["FamilyError", "load_family", "shipped_families"],
        "yamlfile": ["YamlFileError", "load_mapping"],
    },
)
