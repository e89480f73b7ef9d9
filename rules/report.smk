# The report: the versions of every environment that ran, the tidy table and the paper-style
# tables of every pair, then per pair its figures, each output flagged for
# `snakemake --report results/report.html` with a caption of its own (report/*.rst).


# What each environment that ran has installed, read there (seconds): not worth a cluster job.
localrules:
    environment_versions,


rule environment_versions:
    input:
        PLAN.environment_file,
    output:
        "results/versions/{environment}.json",
    log:
        "logs/versions/{environment}.log",
    wildcard_constraints:
        environment=alternatives(PLAN.report_environments()),
    conda:
        "../envs/{environment}.yaml"
    params:
        python=PLAN.environment_python,
        commit=COMMIT,
    shell:
        "{params.python:q} -m shadowft.versions --environment {wildcards.environment}"
        " --commit {params.commit:q} {output:q} > {log:q} 2>&1"


rule report:
    input:
        scores=PLAN.score_files(),
        similarity=PLAN.similarity_files(),
        overlap=PLAN.overlap_files(),
        versions=PLAN.versions_files(),
    output:
        csv=report("results/summary.csv", caption="../report/summary_csv.rst", category="Tables"),
        md=report("results/summary.md", caption="../report/summary_md.rst", category="Tables"),
        html=report("results/summary.html", caption="../report/summary_html.rst", category="Tables"),
    log:
        "logs/report.log",
    conda:
        "../envs/core.yaml"
    params:
        python=PLAN.python("core"),
        # The score files are named by their pairs, variants and benchmarks (a sweep's thousands
        # of paths would not fit one command line).
        pairs=PLAN.pairs,
        variants=[variant.name for variant in PLAN.variants],
        benchmarks=PLAN.benchmarks,
        scoring=PLAN.scoring_json(),
        remote_code=PLAN.remote_code_roles(),
        versions=recorded_versions,
    shell:
        "{params.python:q} -m shadowft.report summary --pairs {params.pairs:q} --variants {params.variants:q}"
        " --benchmarks {params.benchmarks:q} --scoring {params.scoring:q} --remote-code {params.remote_code:q}"
        " --similarity {input.similarity:q} --overlap {input.overlap:q} --versions {input.versions:q}"
        " --csv {output.csv:q} --md {output.md:q} --html {output.html:q} > {log:q} 2>&1"


rule figures:
    input:
        summary="results/summary.csv",
        similarity="results/{pair}/similarity.csv",
    output:
        scores=report(
            "results/plots/{pair}/scores.png",
            caption="../report/scores.rst",
            category="Figures",
            subcategory="{pair}",
            labels={"pair": "{pair}", "figure": "scores per benchmark"},
        ),
        similarity=report(
            "results/plots/{pair}/similarity.png",
            caption="../report/similarity.rst",
            category="Figures",
            subcategory="{pair}",
            labels={"pair": "{pair}", "figure": "weight similarity"},
        ),
    log:
        "logs/figures/{pair}.log",
    conda:
        "../envs/core.yaml"
    params:
        python=PLAN.python("core"),
        scoring=PLAN.scoring_json(),
    shell:
        "{params.python:q} -m shadowft.report figures {input.summary:q} {wildcards.pair:q}"
        " --scoring {params.scoring:q} --similarity {input.similarity:q}"
        " scores={output.scores:q} similarity={output.similarity:q} > {log:q} 2>&1"


# Drawn where the runs tune BASE (the plan's final outputs ask for it then): each run's overlap per layer.
rule overlap_figure:
    input:
        PLAN.pair_overlap_files,
    output:
        overlap=report(
            "results/plots/{pair}/overlap.png",
            caption="../report/overlap.rst",
            category="Figures",
            subcategory="{pair}",
            labels={"pair": "{pair}", "figure": "overlap of the updates"},
        ),
    log:
        "logs/figures/{pair}_overlap.log",
    conda:
        "../envs/core.yaml"
    params:
        python=PLAN.python("core"),
    shell:
        "{params.python:q} -m shadowft.report overlap-figure {wildcards.pair:q} {output.overlap:q}"
        " --overlap {input:q} > {log:q} 2>&1"


# Drawn where the experiment grafts (the plan's final outputs ask for it then).
rule alpha_figure:
    input:
        summary="results/summary.csv",
    output:
        alpha=report(
            "results/plots/{pair}/alpha.png",
            caption="../report/alpha.rst",
            category="Figures",
            subcategory="{pair}",
            labels={"pair": "{pair}", "figure": "score against alpha"},
        ),
    log:
        "logs/figures/{pair}_alpha.log",
    conda:
        "../envs/core.yaml"
    params:
        python=PLAN.python("core"),
        scoring=PLAN.scoring_json(),
    shell:
        "{params.python:q} -m shadowft.report figures {input.summary:q} {wildcards.pair:q}"
        " --scoring {params.scoring:q} alpha={output.alpha:q} > {log:q} 2>&1"


# Drawn only where a setting ran more than one learning rate (the plan's final outputs ask for it then).
rule learning_rate_figure:
    input:
        summary="results/summary.csv",
    output:
        learning_rate=report(
            "results/plots/{pair}/learning_rate.png",
            caption="../report/learning_rate.rst",
            category="Figures",
            subcategory="{pair}",
            labels={"pair": "{pair}", "figure": "score against learning rate"},
        ),
    log:
        "logs/figures/{pair}_learning_rate.log",
    conda:
        "../envs/core.yaml"
    params:
        python=PLAN.python("core"),
        scoring=PLAN.scoring_json(),
    shell:
        "{params.python:q} -m shadowft.report figures {input.summary:q} {wildcards.pair:q}"
        " --scoring {params.scoring:q} learning_rate={output.learning_rate:q} > {log:q} 2>&1"


# Every run's loss curves on BASE and INSTRUCT, from the trainer's state beside each model.
rule training_figure:
    input:
        PLAN.trained_models,
    output:
        training=report(
            "results/plots/{pair}/training.png",
            caption="../report/training.rst",
            category="Figures",
            subcategory="{pair}",
            labels={"pair": "{pair}", "figure": "training loss"},
        ),
    log:
        "logs/figures/{pair}_training.log",
    conda:
        "../envs/core.yaml"
    params:
        python=PLAN.python("core"),
        states=PLAN.trainer_states,
    shell:
        "{params.python:q} -m shadowft.report training-figure {wildcards.pair:q} {output.training:q}"
        " --states {params.states:q} > {log:q} 2>&1"
