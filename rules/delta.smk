# Shadow-FT's own step: the update learned on base, grafted onto instruct, with the same engine
# and command line a user runs without Snakemake (`shadowft`, shadowft/cli.py).


rule extract_delta:
    input:
        base=PLAN.base_model_dir,
        tuned=PLAN.tuned_model,
    output:
        directory("results/{pair}/{run}/delta"),
    log:
        "logs/delta/{pair}/{run}/extract.log",
    benchmark:
        "benchmarks/delta/{pair}/{run}/extract.tsv"
    conda:
        "../envs/core.yaml"
    threads: SIZES.engine_threads
    resources:
        **SIZES.job(Workload.ENGINE, model="base"),
    params:
        python=PLAN.python("core"),
        source=PLAN.tuned_model_flag,
    shell:
        "{params.python:q} -m shadowft extract-delta --base {input.base:q} {params.source} {input.tuned:q}"
        " --threads {threads} --no-progress --out {output:q} > {log:q} 2>&1"


rule graft:
    input:
        instruct=PLAN.instruct_model_dir,
        delta="results/{pair}/{run}/delta",
    output:
        directory("results/{pair}/{run}/shadow_a{alpha}"),
    log:
        "logs/delta/{pair}/{run}/graft_a{alpha}.log",
    benchmark:
        "benchmarks/delta/{pair}/{run}/graft_a{alpha}.tsv"
    conda:
        "../envs/core.yaml"
    threads: SIZES.engine_threads
    resources:
        **SIZES.job(Workload.ENGINE, model="instruct"),
    params:
        python=PLAN.python("core"),
        preset=config["graft"]["preset"],
        vocab_mismatch=config["graft"]["vocab_mismatch"],
    shell:
        "{params.python:q} -m shadowft graft --instruct {input.instruct:q} --delta {input.delta:q}"
        " --alpha {wildcards.alpha} --preset {params.preset} --vocab-mismatch {params.vocab_mismatch}"
        " --threads {threads} --no-progress --out {output:q} > {log:q} 2>&1"


# The paper's observation, measured per pair: how far instruct's weights lie from base's.
rule similarity:
    input:
        checked="results/{pair}/preflight.json",
        base=PLAN.base_model_dir,
        instruct=PLAN.instruct_model_dir,
    output:
        "results/{pair}/similarity.csv",
    log:
        "logs/delta/{pair}/similarity.log",
    benchmark:
        "benchmarks/delta/{pair}/similarity.tsv"
    conda:
        "../envs/core.yaml"
    threads: SIZES.engine_threads
    resources:
        **SIZES.job(Workload.ENGINE, model="base"),
    params:
        python=PLAN.python("core"),
    shell:
        "{params.python:q} -m shadowft similarity {input.base:q} {input.instruct:q}"
        " --threads {threads} --no-progress --out {output:q} > {log:q} 2>&1"


# How a run's updates overlap: the graft's (tuned BASE - BASE) against what instruction tuning
# changed (INSTRUCT - BASE) and against the same tuning on INSTRUCT; the tensors the graft touches.
rule overlap:
    input:
        unpack(PLAN.overlap_inputs),
    output:
        "results/{pair}/{run}/overlap.csv",
    log:
        "logs/delta/{pair}/{run}/overlap.log",
    benchmark:
        "benchmarks/delta/{pair}/{run}/overlap.tsv"
    conda:
        "../envs/core.yaml"
    threads: SIZES.engine_threads
    resources:
        **SIZES.job(Workload.ENGINE, model="base"),
    params:
        python=PLAN.python("core"),
        updates=PLAN.overlap_updates,
        preset=config["graft"]["preset"],
        vocab_mismatch=config["graft"]["vocab_mismatch"],
    shell:
        "{params.python:q} -m shadowft overlap {input.base:q} {input.instruct:q} {params.updates}"
        " --preset {params.preset} --vocab-mismatch {params.vocab_mismatch}"
        " --threads {threads} --no-progress --out {output:q} > {log:q} 2>&1"
