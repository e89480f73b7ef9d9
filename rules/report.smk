# The report: the versions of every environment that ran, the tidy tables (every score with its
# interval, every paired difference), the paper-style tables of every pair with the verdict and
# the glossary, the answers behind the scores, then per pair its figures, each output flagged for
# `snakemake --report results/report.html` with a caption of its own (report/*.rst); the
# verdict and glossary also as reStructuredText, which the report's landing page includes.


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
        predictions=PLAN.prediction_files(),
        hardware=PLAN.hardware_files(),
        similarity=PLAN.similarity_files(),
        overlap=PLAN.overlap_files(),
        versions=PLAN.versions_files(),
    output:
        csv=report("results/summary.csv", caption="../report/summary_csv.rst", category="Tables"),
        md=report("results/summary.md", caption="../report/summary_md.rst", category="Tables"),
        html=report("results/summary.html", caption="../report/summary_html.rst", category="Tables"),
        paired=report("results/paired.csv", caption="../report/paired_csv.rst", category="Tables"),
        rst="results/verdict.rst",
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
        descriptions=PLAN.descriptions_json(),
        remote_code=PLAN.remote_code_roles(),
        versions=recorded_versions,
    shell:
        "{params.python:q} -m shadowft.report summary --pairs {params.pairs:q} --variants {params.variants:q}"
        " --benchmarks {params.benchmarks:q} --scoring {params.scoring:q} --remote-code {params.remote_code:q}"
        " --descriptions {params.descriptions:q} --similarity {input.similarity:q} --overlap {input.overlap:q}"
        " --versions {input.versions:q} --hardware {input.hardware:q} --csv {output.csv:q} --md {output.md:q} --html {output.html:q}"
        " --paired {output.paired:q} --rst {output.rst:q} > {log:q} 2>&1"


# The same questions of one benchmark as every variant of a pair answered them.
rule samples:
    input:
        PLAN.sample_inputs,
    output:
        md=report(
            "results/samples/{pair}/{benchmark}.md",
            caption="../report/samples.rst",
            category="Answers",
            subcategory="{pair}",
            labels={"pair": "{pair}", "benchmark": "{benchmark}", "format": "Markdown"},
        ),
        html=report(
            "results/samples/{pair}/{benchmark}.html",
            caption="../report/samples.rst",
            category="Answers",
            subcategory="{pair}",
            labels={"pair": "{pair}", "benchmark": "{benchmark}", "format": "HTML"},
        ),
    log:
        "logs/samples/{pair}/{benchmark}.log",
    conda:
        "../envs/core.yaml"
    params:
        python=PLAN.python("core"),
        predictions=PLAN.sample_predictions,
    shell:
        "{params.python:q} -m shadowft.report samples {wildcards.pair:q} {wildcards.benchmark:q}"
        " --predictions {params.predictions:q} --md {output.md:q} --html {output.html:q} > {log:q} 2>&1"


rule figures:
    input:
        summary="results/summary.csv",
        predictions=PLAN.prediction_files,
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
        "{params.python:q} -m shadowft.report figures {input.summary:q} {wildcards.pair:q} --results ."
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
        predictions=PLAN.prediction_files,
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
        "{params.python:q} -m shadowft.report figures {input.summary:q} {wildcards.pair:q} --results ."
        " --scoring {params.scoring:q} alpha={output.alpha:q} > {log:q} 2>&1"


# Drawn where a graft, Instruct and Instruct tuned directly are scored on a task and a retention
# benchmark (the plan's final outputs ask for it then).
rule claim_figure:
    input:
        summary="results/summary.csv",
        predictions=PLAN.prediction_files,
    output:
        claim=report(
            "results/plots/{pair}/claim.png",
            caption="../report/claim.rst",
            category="Figures",
            subcategory="{pair}",
            labels={"pair": "{pair}", "figure": "the claim: task against skills kept"},
        ),
    log:
        "logs/figures/{pair}_claim.log",
    conda:
        "../envs/core.yaml"
    params:
        python=PLAN.python("core"),
        scoring=PLAN.scoring_json(),
    shell:
        "{params.python:q} -m shadowft.report figures {input.summary:q} {wildcards.pair:q} --results ."
        " --scoring {params.scoring:q} claim={output.claim:q} > {log:q} 2>&1"


# Drawn only where a setting ran more than one learning rate (the plan's final outputs ask for it then).
rule learning_rate_figure:
    input:
        summary="results/summary.csv",
        predictions=PLAN.prediction_files,
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
        "{params.python:q} -m shadowft.report figures {input.summary:q} {wildcards.pair:q} --results ."
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
