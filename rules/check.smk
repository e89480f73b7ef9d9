# Before any training: a pair's models are checked against each other from their configs
# and safetensors headers alone, so a wrong pair or a broken file stops the run in seconds
# rather than at the graft, after both trainings.


# Reading headers takes milliseconds: not worth a cluster job.
localrules:
    check_pair,


rule check_pair:
    input:
        base=base_model_dir,
        instruct=instruct_model_dir,
    output:
        "results/{pair}/preflight.json",
    log:
        "logs/check/{pair}.log",
    conda:
        "../envs/core.yaml"
    params:
        vocab_mismatch=config["graft"]["vocab_mismatch"],
        allow_pickle=pair_allows_pickle,
    script:
        "../scripts/check_pair.py"
