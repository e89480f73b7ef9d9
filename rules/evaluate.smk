# OpenCompass scores each variant of a pair on each benchmark, one job per
# (pair, variant, benchmark), so adding a benchmark or a variant recomputes nothing else.


rule evaluate:
    input:
        checked="results/{pair}/preflight.json",
        model=variant_model_dir,
        data=benchmark_dataset_dir,
    output:
        "results/{pair}/eval/{variant}/{benchmark}/scores.csv",
    log:
        "logs/evaluate/{pair}/{variant}/{benchmark}.log",
    benchmark:
        "benchmarks/evaluate/{pair}/{variant}/{benchmark}.tsv"
    conda:
        "../envs/eval.yaml"
    threads: tool_threads()
    resources:
        gpu=sized_gpu,
        cpus_per_gpu=cluster_node().cpus_per_gpu,
        mem_mb=sized_mem_mb,
        runtime=sized_runtime,
    params:
        python=env_python("eval"),
        benchmark=benchmark_spec,
        work_dir="results/{pair}/eval/{variant}/{benchmark}/opencompass",
    shell:
        "{params.python} -m shadowft.opencompass evaluate --model {input.model}"
        " --benchmark-json {params.benchmark:q} --work-dir {params.work_dir}"
        " --num-gpus {resources.gpu} --scores {output} > {log} 2>&1"
