# The paper-style table: every variant of every pair on every benchmark.


rule report:
    input:
        score_files(),
    output:
        csv="results/summary.csv",
        md="results/summary.md",
    params:
        records=score_records(),
    log:
        "logs/report.log",
    conda:
        "../envs/core.yaml"
    script:
        "../scripts/report.py"
