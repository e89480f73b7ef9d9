# Before any training: a pair's models are checked against each other from their configs
# and safetensors headers alone, so a wrong pair or a broken file stops the run in seconds
# rather than at the graft, after both trainings.


# Reading headers takes milliseconds: not worth a cluster job.
localrules:
    check_pair,


rule check_pair:
    input:
        base=PLAN.base_model_dir,
        instruct=PLAN.instruct_model_dir,
    output:
        "results/{pair}/preflight.json",
    log:
        "logs/check/{pair}.log",
    conda:
        "../envs/core.yaml"
    params:
        python=PLAN.python("core"),
        vocab_mismatch=config["graft"]["vocab_mismatch"],
        allow_pickle=PLAN.allow_pickle_flag,
    shell:
        "{params.python:q} -m shadowft check-pair {input.base:q} {input.instruct:q}"
        " --vocab-mismatch {params.vocab_mismatch} {params.allow_pickle} --out {output:q} > {log:q} 2>&1"
