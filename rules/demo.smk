# The embedded demo: a tiny base/instruct pair and a synthetic task, built here.
# BASE is a random-init model pre-trained on a synthetic corpus; INSTRUCT is that base
# after instruction tuning on a chat set, so the pair mirrors the paper's in miniature.
# The chat set's held-out questions and the task's are the demo's two benchmarks.


rule build_demo:
    output:
        init=directory("data/demo/init"),
        pretrain=directory("data/demo/pretrain"),
        chat=directory("data/demo/demo_chat"),
        task=directory("data/demo/demo_task"),
        preference=directory("data/demo/demo_preference"),
    log:
        "logs/demo/build.log",
    conda:
        "../envs/core.yaml"
    params:
        python=PLAN.python("core"),
        seed=config["seed"],
    shell:
        "{params.python:q} -m shadowft.demo build --seed {params.seed} --init {output.init:q}"
        " --pretrain {output.pretrain:q} --chat {output.chat:q} --task {output.task:q}"
        " --preference {output.preference:q} > {log:q} 2>&1"


# Writing a step's YAML takes a moment: not worth a cluster job.
localrules:
    demo_training_config,


rule demo_training_config:
    input:
        model=PLAN.demo_step_model_dir,
        dataset=PLAN.demo_step_dataset_dir,
    output:
        "data/demo/{step}.yaml",
    log:
        "logs/demo/{step}_config.log",
    conda:
        "../envs/core.yaml"
    params:
        python=PLAN.python("core"),
        step=PLAN.demo_step_name,
        seed=config["seed"],
    shell:
        "{params.python:q} -m shadowft.demo step-config {params.step} --model {input.model:q}"
        " --dataset {input.dataset:q} --work-dir data/demo/{wildcards.step}/work --seed {params.seed}"
        " {output:q} > {log:q} 2>&1"


# The pair's two steps are training runs like the experiment's (rules/train.smk), on the demo's data.
use rule train as demo_train with:
    input:
        config="data/demo/{step}.yaml",
        model=PLAN.demo_step_model_dir,
        dataset=PLAN.demo_step_dataset_dir,
    output:
        directory("data/demo/{step}/model"),
    log:
        "logs/demo/{step}_train.log",
    benchmark:
        "benchmarks/demo/{step}_train.tsv"
    resources:
        **SIZES.job(Workload.TRAIN_FULL, model="model", tokens=SIZES.training_tokens),
