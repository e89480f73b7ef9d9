# The embedded demo: a tiny base/instruct pair and a synthetic task, built here.
# BASE is a random-init model pre-trained on a synthetic corpus; INSTRUCT is that base
# after instruction tuning on a chat set, so the pair mirrors the paper's in miniature.
# The chat set's held-out questions and the task's are the demo's two benchmarks.


rule build_demo:
    output:
        init=directory("data/demo/init"),
        pretrain=directory("data/demo/pretrain"),
        chat=directory("data/demo/chat"),
        task=directory("data/demo/task"),
    log:
        "logs/demo/build.log",
    conda:
        "../envs/core.yaml"
    params:
        seed=config["seed"],
    script:
        "../scripts/build_demo.py"


# Writing a step's YAML takes a moment: not worth a cluster job.
localrules:
    demo_training_config,


rule demo_training_config:
    input:
        model=demo_step_model_dir,
        dataset=demo_step_dataset_dir,
    output:
        "data/demo/{step}.yaml",
    log:
        "logs/demo/{step}_config.log",
    conda:
        "../envs/core.yaml"
    params:
        step=demo_step_name,
        paths=demo_step_paths,
    script:
        "../scripts/write_demo_training_config.py"


rule demo_train:
    input:
        config="data/demo/{step}.yaml",
        model=demo_step_model_dir,
        dataset=demo_step_dataset_dir,
    output:
        directory("data/demo/{step}/model"),
    log:
        "logs/demo/{step}_train.log",
    benchmark:
        "benchmarks/demo/{step}_train.tsv"
    conda:
        "../envs/train.yaml"
    threads: tool_threads()
    resources:
        gpu=sized_gpu,
        nodes=sized_nodes,
        cpus_per_gpu=cluster_node().cpus_per_gpu,
        mem_mb=sized_mem_mb,
        runtime=sized_runtime,
    params:
        python=env_python("train"),
    shell:
        "{params.python:q} -m shadowft.llamafactory train {input.config:q} {output:q}"
        " --gpus {resources.gpu} --nodes {resources.nodes} > {log:q} 2>&1"
