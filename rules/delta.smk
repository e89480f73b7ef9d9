# Shadow-FT's own step: the update learned on base, grafted onto instruct.


rule extract_delta:
    input:
        base=base_model_dir,
        tuned=delta_source,
    output:
        directory("results/{pair}/{run}/delta"),
    log:
        "logs/delta/{pair}/{run}/extract.log",
    benchmark:
        "benchmarks/delta/{pair}/{run}/extract.tsv"
    conda:
        "../envs/core.yaml"
    threads: engine_threads()
    resources:
        mem_mb=sized_mem_mb,
        runtime=sized_runtime,
    params:
        tuning=run_tuning,
    script:
        "../scripts/extract_delta.py"


rule graft:
    input:
        instruct=instruct_model_dir,
        delta="results/{pair}/{run}/delta",
    output:
        directory("results/{pair}/{run}/shadow_a{alpha}"),
    log:
        "logs/delta/{pair}/{run}/graft_a{alpha}.log",
    benchmark:
        "benchmarks/delta/{pair}/{run}/graft_a{alpha}.tsv"
    conda:
        "../envs/core.yaml"
    threads: engine_threads()
    resources:
        mem_mb=sized_mem_mb,
        runtime=sized_runtime,
    params:
        alpha="{alpha}",
        preset=config["graft"]["preset"],
        vocab_mismatch=config["graft"]["vocab_mismatch"],
    script:
        "../scripts/graft.py"


# The paper's observation, measured per pair: how far instruct's weights lie from base's.
rule similarity:
    input:
        checked="results/{pair}/preflight.json",
        base=base_model_dir,
        instruct=instruct_model_dir,
    output:
        "results/{pair}/similarity.csv",
    log:
        "logs/delta/{pair}/similarity.log",
    benchmark:
        "benchmarks/delta/{pair}/similarity.tsv"
    conda:
        "../envs/core.yaml"
    threads: engine_threads()
    resources:
        mem_mb=sized_mem_mb,
        runtime=sized_runtime,
    script:
        "../scripts/similarity.py"
