# OpenCompass scores each variant of a pair on each benchmark, one job per
# (pair, variant, benchmark), so adding a benchmark or a variant recomputes nothing else.


rule evaluate:
    input:
        model=variant_model_dir,
        data=benchmark_dataset_dir,
    output:
        "results/{pair}/eval/{variant}/{benchmark}/scores.csv",
    params:
        python=env_python("eval"),
        benchmark=benchmark_spec,
        work_dir="results/{pair}/eval/{variant}/{benchmark}/opencompass",
    log:
        "logs/evaluate/{pair}/{variant}/{benchmark}.log",
    benchmark:
        "benchmarks/evaluate/{pair}/{variant}/{benchmark}.tsv"
    resources:
        gpu=sized_gpu,
        cpus_per_gpu=cluster_node().cpus_per_gpu,
        mem_mb=sized_mem_mb,
        runtime=sized_runtime,
    threads: tool_threads()
    conda:
        "../envs/eval.yaml"
    shell:
        "{params.python} -m shadowft.opencompass evaluate --model {input.model}"
        " --benchmark-json {params.benchmark:q} --work-dir {params.work_dir}"
        " --num-gpus {resources.gpu} --scores {output} > {log} 2>&1"
