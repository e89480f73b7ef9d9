# Models from the Hugging Face Hub or a local folder, into data/models/{model}/ with a
# manifest of every file's hash; training data from a Hub dataset or a local file, into a
# LLaMA-Factory dataset folder data/datasets/{dataset}/ with its manifest. Downloads and
# dataset preparation run on the login node, where the network is, before any training job, and
# after LLaMA-Factory's names are checked (rules/train.smk).
localrules:
    download_model,
    download_dataset,
    prepare_dataset,


rule download_model:
    input:
        ancient(LLAMAFACTORY_CHECK),
    output:
        directory("data/models/{model}"),
    log:
        "logs/download_model/{model}.log",
    conda:
        "../envs/core.yaml"
    params:
        python=PLAN.python("core"),
        spec=PLAN.model_spec,
    shell:
        "{params.python:q} -m shadowft.data download-model {params.spec:q} {output:q} > {log:q} 2>&1"


# The data files of a Hub dataset at its pinned revision (a subset's, or those matching
# `files`), as they are: sampling them again with another seed downloads nothing.
rule download_dataset:
    input:
        ancient(LLAMAFACTORY_CHECK),
    output:
        directory("data/downloads/{dataset}"),
    log:
        "logs/download_dataset/{dataset}.log",
    conda:
        "../envs/core.yaml"
    params:
        python=PLAN.python("core"),
        spec=PLAN.dataset_spec,
    shell:
        "{params.python:q} -m shadowft.data download-dataset {params.spec:q} {output:q} > {log:q} 2>&1"


# Sampled, checked row by row (a format error names its file and row) and registered in
# a generated dataset_info.json. In the train environment: pyarrow reads parquet there.
rule prepare_dataset:
    input:
        PLAN.dataset_rows_source,
    output:
        directory("data/datasets/{dataset}"),
    log:
        "logs/prepare_dataset/{dataset}.log",
    conda:
        "../envs/train.yaml"
    params:
        python=PLAN.python("train"),
        spec=PLAN.dataset_spec,
    shell:
        "{params.python:q} -m shadowft.data prepare {wildcards.dataset:q} {params.spec:q} {input:q} {output:q} > {log:q} 2>&1"
