# The paper-style table: every variant of every pair on every benchmark, with each pair's
# base/instruct weight difference, and a bar chart of the same scores.


rule report:
    input:
        scores=score_files(),
        similarity=similarity_files(),
    output:
        csv="results/summary.csv",
        md="results/summary.md",
        png="results/plots/scores.png",
    log:
        "logs/report.log",
    conda:
        "../envs/core.yaml"
    params:
        records=score_records(),
        similarity=similarity_by_pair(),
        seed=config["seed"],
        benchmark_groups=benchmark_groups(),
    script:
        "../scripts/report.py"
