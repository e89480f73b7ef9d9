# The report: the versions of every environment that ran, the tidy table and the paper-style
# tables of every pair, then per pair its figures, each output flagged for
# `snakemake --report results/report.html` with a caption of its own (report/*.rst).


# What each environment that ran has installed, read there (seconds): not worth a cluster job.
localrules:
    environment_versions,


rule environment_versions:
    input:
        environment_file,
    output:
        "results/versions/{environment}.json",
    log:
        "logs/versions/{environment}.log",
    wildcard_constraints:
        environment=alternatives(report_environments()),
    conda:
        "../envs/{environment}.yaml"
    params:
        python=environment_python,
        commit=shadowft_commit(),
    shell:
        "{params.python} -m shadowft.versions --environment {wildcards.environment}"
        " --commit {params.commit:q} {output} > {log} 2>&1"


rule report:
    input:
        scores=score_files(),
        similarity=similarity_files(),
        versions=environment_versions_files(),
    output:
        csv=report("results/summary.csv", caption="../report/summary_csv.rst", category="Tables"),
        md=report("results/summary.md", caption="../report/summary_md.rst", category="Tables"),
        html=report("results/summary.html", caption="../report/summary_html.rst", category="Tables"),
    log:
        "logs/report.log",
    conda:
        "../envs/core.yaml"
    params:
        records=score_records(),
        benchmark_groups=benchmark_groups(),
        similarity=similarity_by_pair(),
        versions=recorded_versions,
    script:
        "../scripts/report.py"


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
        benchmark_groups=benchmark_groups(),
    script:
        "../scripts/figures.py"


# Drawn where the experiment grafts (final_outputs asks for it then).
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
        benchmark_groups=benchmark_groups(),
    script:
        "../scripts/figures.py"


# Drawn only where a setting ran more than one learning rate (final_outputs asks for it then).
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
        benchmark_groups=benchmark_groups(),
    script:
        "../scripts/figures.py"


# Every run's loss curves on BASE and INSTRUCT, from the trainer's state beside each model.
rule training_figure:
    input:
        pair_trained_models,
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
        runs=pair_trainer_states,
    script:
        "../scripts/training_figure.py"
