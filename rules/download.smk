# Models from the Hugging Face Hub or a local folder, into data/models/{model}/ with a
# manifest of every file's hash. Downloads run on the login node, where the network is.
localrules:
    download_model,


rule download_model:
    output:
        directory("data/models/{model}"),
    log:
        "logs/download_model/{model}.log",
    conda:
        "../envs/core.yaml"
    params:
        source=model_source,
    script:
        "../scripts/download_model.py"
