# OpenCompass scores each variant of a pair on each benchmark, one job per
# (pair, variant, benchmark), so adding a benchmark or a variant recomputes nothing else.
# Standard benchmarks' data is prefetched on the login node; evaluation jobs run offline.
localrules:
    prefetch_benchmarks,


rule prefetch_benchmarks:
    output:
        prefetch_manifest("{benchmark}"),
    log:
        "logs/prefetch_benchmarks/{benchmark}.log",
    conda:
        f"../envs/{evaluation_env()}.yaml"
    params:
        python=env_python(evaluation_env()),
        benchmarks=prefetched_benchmark,
        data_cache=manifest_cache,
        urls=dataset_urls(),
    shell:
        "{params.python:q} -m shadowft.opencompass prefetch --benchmarks-json {params.benchmarks:q}"
        " --data-cache {params.data_cache:q} --urls {params.urls:q} --manifest {output:q} > {log:q} 2>&1"


rule evaluate:
    input:
        checked="results/{pair}/preflight.json",
        model=variant_model_dir,
        data=benchmark_data,
    output:
        "results/{pair}/eval/{variant}/{benchmark}/scores.csv",
    log:
        "logs/evaluate/{pair}/{variant}/{benchmark}.log",
    benchmark:
        "benchmarks/evaluate/{pair}/{variant}/{benchmark}.tsv"
    conda:
        f"../envs/{evaluation_env()}.yaml"
    threads: tool_threads()
    resources:
        gpu=sized_gpu,
        cpus_per_gpu=cluster_node().cpus_per_gpu,
        mem_mb=sized_mem_mb,
        runtime=sized_runtime,
    params:
        python=env_python(evaluation_env()),
        benchmark=benchmark_spec,
        backend=config["evaluation"]["backend"],
        data_cache=data_cache(),
        work_dir="results/{pair}/eval/{variant}/{benchmark}/opencompass",
        chat_template_kwargs=pair_chat_template_kwargs,
        trust_remote_code=trust_remote_code_flag,
    shell:
        "{params.python:q} -m shadowft.opencompass evaluate --model {input.model:q}"
        " --benchmark-json {params.benchmark:q} --work-dir {params.work_dir:q}"
        " --backend {params.backend:q} --data-cache {params.data_cache:q}"
        " --chat-template-kwargs {params.chat_template_kwargs:q} {params.trust_remote_code}"
        " --num-gpus {resources.gpu} --scores {output:q} > {log:q} 2>&1"
