# OpenCompass scores each variant of a pair on each benchmark, one job per
# (pair, variant, benchmark), so adding a benchmark or a variant recomputes nothing else.
# Standard benchmarks' data is prefetched on the login node; evaluation jobs run offline.
localrules:
    prefetch_benchmarks,


rule prefetch_benchmarks:
    output:
        PLAN.prefetch_manifest("{benchmark}"),
    log:
        "logs/prefetch_benchmarks/{benchmark}.log",
    conda:
        f"../envs/{PLAN.evaluation_environment}.yaml"
    params:
        python=PLAN.python(PLAN.evaluation_environment),
        benchmarks=PLAN.prefetched_benchmark,
        data_cache=PLAN.manifest_cache,
        urls=PLAN.dataset_urls(),
    shell:
        "{params.python:q} -m shadowft.evaluation prefetch --benchmarks-json {params.benchmarks:q}"
        " --data-cache {params.data_cache:q} --urls {params.urls:q} --manifest {output:q} > {log:q} 2>&1"


rule evaluate:
    input:
        checked="results/{pair}/preflight.json",
        model=PLAN.variant_model_dir,
        data=PLAN.benchmark_data,
    output:
        scores="results/{pair}/eval/{variant}/{benchmark}/scores.csv",
        # What the model answered, each answer with its grade where the evaluator gives one: the
        # report's intervals, paired tests and sample answers read it.
        predictions="results/{pair}/eval/{variant}/{benchmark}/predictions.json",
        # The machine the evaluation ran on (unsaturated scores move between CPUs).
        hardware="results/{pair}/eval/{variant}/{benchmark}/hardware.json",
    log:
        "logs/evaluate/{pair}/{variant}/{benchmark}.log",
    benchmark:
        "benchmarks/evaluate/{pair}/{variant}/{benchmark}.tsv"
    conda:
        f"../envs/{PLAN.evaluation_environment}.yaml"
    threads: SIZES.tool_threads
    resources:
        **SIZES.job(Workload.EVALUATE, model="model", tokens=SIZES.evaluation_tokens),
    params:
        python=PLAN.python(PLAN.evaluation_environment),
        benchmark=PLAN.benchmark_json,
        backend=config["evaluation"]["backend"],
        data_cache=PLAN.data_cache,
        work_dir=PLAN.evaluation_work_dir,
        chat_template_kwargs=PLAN.chat_template_kwargs,
        trust_remote_code=PLAN.remote_code_flag,
    shell:
        "{params.python:q} -m shadowft.evaluation evaluate --model {input.model:q}"
        " --benchmark-json {params.benchmark:q} --work-dir {params.work_dir:q}"
        " --backend {params.backend:q} --data-cache {params.data_cache:q}"
        " --chat-template-kwargs {params.chat_template_kwargs:q} {params.trust_remote_code}"
        " --num-gpus {resources.gpu} --scores {output.scores:q} --predictions {output.predictions:q}"
        " --hardware {output.hardware:q} > {log:q} 2>&1"
