"""LLaMA-Factory arguments as data and the runner's bookkeeping, without LLaMA-Factory."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from conftest import ROOT

from shadowft.demo import build, pair
from shadowft.training import arguments as lf_args
from shadowft.training import llamafactory as lf

PATHS = {
    "model_dir": "data/models/base",
    "dataset_dir": "data/datasets/shadow_2k",
    "dataset": "shadow_2k",
    "template": "qwen",
    "output_dir": "results/pair/sft-lora-lr2e-4-r8-s0/train_base/work",
}


def arguments(tuning="lora", **options):
    return lf_args.training_arguments(**PATHS, tuning=tuning, **options)


def test_lora_gets_the_paper_hyper_parameters():
    args = arguments("lora")
    assert args["finetuning_type"] == "lora"
    assert args["stage"] == "sft"
    assert (args["lora_rank"], args["lora_alpha"], args["lora_target"]) == (8, 16, "all")
    assert args["learning_rate"] == 2e-4
    assert args["cutoff_len"] == 4096
    assert args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] == 32
    assert (args["num_train_epochs"], args["lr_scheduler_type"], args["warmup_ratio"]) == (1.0, "cosine", 0.1)
    assert args["bf16"] is True


def test_full_tuning_has_its_learning_rate_and_no_lora_keys():
    args = arguments("full")
    assert args["finetuning_type"] == "full"
    assert args["learning_rate"] == 1e-5
    assert not any(key.startswith("lora_") for key in args)


def test_a_run_is_reproducible_offline_and_resumable():
    args = arguments()
    assert args["do_train"] is True
    assert args["seed"] == lf_args.RUN_DEFAULTS["seed"]
    assert arguments(seed=7)["seed"] == 7 and arguments(seed=0)["seed"] == 0
    assert pair.step_arguments("instruct", model_dir="b", dataset_dir="c", output_dir="w", seed=3)["seed"] == 3
    with pytest.raises(TypeError, match="seed"):
        arguments(seed="7")
    assert args["report_to"] == "none"
    assert args["trust_remote_code"] is False
    assert args["plot_loss"] is False
    assert args["overwrite_output_dir"] is False
    assert args["save_strategy"] == "steps" and args["save_steps"] > 0
    assert args["save_only_model"] is False  # resume needs the optimizer state


def test_paths_are_passed_through_literally():
    args = arguments()
    assert args["model_name_or_path"] == PATHS["model_dir"]
    assert args["dataset_dir"] == PATHS["dataset_dir"]
    assert args["output_dir"] == PATHS["output_dir"]
    assert (args["dataset"], args["template"]) == ("shadow_2k", "qwen")


def test_overrides_win_over_defaults_and_may_add_keys():
    args = arguments(overrides={"learning_rate": 1e-4, "lora_rank": 128, "deepspeed": "ds_z3.json"})
    assert (args["learning_rate"], args["lora_rank"], args["deepspeed"]) == (1e-4, 128, "ds_z3.json")
    assert args["lora_alpha"] == 16  # an explicit default is not rescaled behind the user's back


def test_a_runs_learning_rate_and_rank_win_and_lora_alpha_follows_the_rank():
    args = arguments(overrides={"learning_rate": 1.0, "lora_rank": 4}, learning_rate=1e-4, lora_rank=64)
    assert (args["learning_rate"], args["lora_rank"], args["lora_alpha"]) == (1e-4, 64, 128)
    assert arguments(overrides={"lora_alpha": 32}, lora_rank=64)["lora_alpha"] == 32
    assert arguments("full", learning_rate=2e-5)["learning_rate"] == 2e-5
    with pytest.raises(ValueError, match="LoRA runs only"):
        arguments("full", lora_rank=8)


def test_dpo_keeps_the_paper_defaults_and_takes_preference_overrides():
    args = arguments(stage="dpo", overrides={"pref_beta": 0.2, "pref_loss": "sigmoid"}, learning_rate=5e-6, lora_rank=8)
    assert (args["stage"], args["pref_beta"], args["pref_loss"], args["learning_rate"]) == ("dpo", 0.2, "sigmoid", 5e-6)


def test_overrides_do_not_leak_between_calls():
    arguments(overrides={"learning_rate": 1.0})
    assert arguments()["learning_rate"] == 2e-4


@pytest.mark.parametrize("key", sorted(lf_args.MANAGED_KEYS))
@pytest.mark.bad_input("LLaMA-Factory", caught="check")
def test_workflow_managed_keys_cannot_be_overridden(key):
    with pytest.raises(ValueError, match=key):
        arguments(overrides={key: "elsewhere"})


def test_unknown_tuning_and_stage_are_named():
    with pytest.raises(ValueError, match="'qlora'"):
        arguments("qlora")
    with pytest.raises(ValueError, match="'pretrain'"):
        arguments(stage="pretrain")


def test_demo_pair_steps_use_the_demo_datasets():
    base = pair.step_arguments("pretrain", model_dir="init", dataset_dir="pretrain", output_dir="work")
    assert (base["stage"], base["finetuning_type"], base["dataset"]) == ("pt", "full", build.CORPUS_DATASET)
    instruct = pair.step_arguments("instruct", model_dir="base", dataset_dir="chat", output_dir="work")
    assert (instruct["stage"], instruct["finetuning_type"], instruct["dataset"]) == ("sft", "full", build.CHAT_DATASET)
    for args in (base, instruct):
        assert args["template"] == build.TEMPLATE
        assert args["default_system"] == build.DEFAULT_SYSTEM
        assert args["bf16"] is False


def test_demo_overrides_cover_every_step_and_stay_small():
    assert set(pair.STEP_OVERRIDES) == set(pair.STEPS) == {"pretrain", "instruct"}
    for overrides in pair.STEP_OVERRIDES.values():
        assert lf_args.MANAGED_KEYS.keys().isdisjoint(overrides)
        assert overrides["cutoff_len"] <= 128


def test_write_yaml_is_sorted_deterministic_and_round_trips(tmp_path):
    args = arguments(overrides={"default_system": ""})
    shuffled = dict(reversed(list(args.items())))
    lf_args.write_yaml(args, tmp_path / "a.yaml")
    lf_args.write_yaml(shuffled, tmp_path / "b.yaml")
    text = (tmp_path / "a.yaml").read_text()
    assert text == (tmp_path / "b.yaml").read_text()
    keys = [line.split(":")[0] for line in text.splitlines() if not line.startswith(" ")]
    assert keys == sorted(keys)
    assert lf_args.read_yaml(tmp_path / "a.yaml") == args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml", "b.yaml"]  # no temporary left


def test_read_yaml_rejects_a_non_mapping(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping"):
        lf_args.read_yaml(path)


def make_checkpoint(work, step, complete=True):
    folder = work / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    if complete:
        (folder / lf.TRAINER_STATE).write_text(json.dumps({"global_step": step}))
    return folder


def test_prepare_work_dir_resumes_from_the_newest_complete_checkpoint(tmp_path):
    work = tmp_path / "work"
    make_checkpoint(work, 20)
    make_checkpoint(work, 100)
    make_checkpoint(work, 120, complete=False)
    (work / "trainer_log.jsonl").write_text("{}\n")
    assert lf.prepare_work_dir(work) == "checkpoint-100"
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint-100", "checkpoint-20", "trainer_log.jsonl"]


def test_prepare_work_dir_empties_leftovers_without_a_checkpoint(tmp_path):
    work = tmp_path / "work"
    make_checkpoint(work, 40, complete=False)
    (work / "model.safetensors").write_bytes(b"half written")
    (work / "runs").mkdir()
    assert lf.prepare_work_dir(work) is None
    assert list(work.iterdir()) == []


def test_prepare_work_dir_creates_a_missing_dir(tmp_path):
    assert lf.prepare_work_dir(tmp_path / "a" / "work") is None
    assert (tmp_path / "a" / "work").is_dir()


@pytest.fixture
def fake_llamafactory(monkeypatch):
    """Stand in for LLaMA-Factory on GPUs: record the launch, write what a LoRA run leaves in output_dir."""
    launches = []

    def launch(config_yaml, args, launch, nodes):
        work = Path(args["output_dir"])
        launches.append((sorted(p.name for p in work.iterdir()), launch, nodes, args))
        make_checkpoint(work, 8)
        (work / "adapter_model.safetensors").write_bytes(b"final")
        (work / "adapter_config.json").write_text("{}")
        (work / "trainer_log.jsonl").write_text("{}\n")

    monkeypatch.setattr(lf, "check_arguments", lambda args, **kwargs: None)
    monkeypatch.setattr(lf, "_launch_training", launch)
    monkeypatch.setattr(lf, "_cuda_available", lambda: True)
    return launches


def write_config(tmp_path):
    config = tmp_path / "train_base.yaml"
    lf_args.write_yaml(
        lf_args.training_arguments(**{**PATHS, "output_dir": str(tmp_path / "work")}, tuning="lora"), config
    )
    return config


def test_run_training_publishes_the_final_files_and_drops_checkpoints(tmp_path, fake_llamafactory):
    result = lf.run_training(write_config(tmp_path), tmp_path / "model", gpus=0)
    assert result["resumed_from"] is None
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        lf.LAUNCH_RECORD_FILE,
        lf.EFFECTIVE_ARGUMENTS_FILE,
        "trainer_log.jsonl",
    ]
    assert not (tmp_path / "work").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_run_training_reports_the_checkpoint_it_resumes_from(tmp_path, fake_llamafactory, capsys):
    make_checkpoint(tmp_path / "work", 4)
    result = lf.run_training(write_config(tmp_path), tmp_path / "model", gpus=0)
    assert result["resumed_from"] == "checkpoint-4"
    assert [listing for listing, *_ in fake_llamafactory] == [["checkpoint-4", lf.EFFECTIVE_ARGUMENTS_FILE]]
    assert "resuming" in capsys.readouterr().err


def test_run_training_keeps_checkpoints_when_no_weights_come_out(tmp_path, monkeypatch):
    def launch(config_yaml, args, launch, nodes):
        make_checkpoint(Path(args["output_dir"]), 8)

    monkeypatch.setattr(lf, "check_arguments", lambda args, **kwargs: None)
    monkeypatch.setattr(lf, "_launch_training", launch)
    with pytest.raises(RuntimeError, match="no model weights"):
        lf.run_training(write_config(tmp_path), tmp_path / "model", gpus=0)
    assert (tmp_path / "work" / "checkpoint-8").is_dir()
    assert not (tmp_path / "model").exists()


def test_one_device_trains_in_process_without_deepspeed(tmp_path, fake_llamafactory):
    record = lf.run_training(write_config(tmp_path), tmp_path / "model", gpus=1)
    ((_, launch, nodes, args),) = fake_llamafactory
    assert (launch.world_size, launch.in_process, nodes) == (1, True, 1)
    assert "deepspeed" not in args
    assert record["deepspeed"] is None and record["processes_per_node"] == 1
    published = json.loads((tmp_path / "model" / lf.LAUNCH_RECORD_FILE).read_text())
    assert published == record


def write_full_config(tmp_path, **overrides):
    config = tmp_path / "train_base.yaml"
    arguments = lf_args.training_arguments(
        **{**PATHS, "output_dir": str(tmp_path / "work")}, tuning="full", overrides=overrides
    )
    lf_args.write_yaml(arguments, config)
    return config


def test_full_tuning_on_several_gpus_shards_with_zero3_recorded_beside_the_model(tmp_path, fake_llamafactory):
    from shadowft.training.launch import ZERO3_CONFIG

    record = lf.run_training(write_full_config(tmp_path), tmp_path / "model", gpus=4)
    ((listing, launch, nodes, args),) = fake_llamafactory
    assert (launch.nproc_per_node, launch.in_process, nodes) == (4, False, 1)
    assert args["deepspeed"] == str(tmp_path / "work" / lf.DEEPSPEED_CONFIG_FILE)
    assert lf.DEEPSPEED_CONFIG_FILE in listing
    assert record["deepspeed"] == args["deepspeed"]
    assert json.loads((tmp_path / "model" / lf.DEEPSPEED_CONFIG_FILE).read_text()) == ZERO3_CONFIG
    effective = lf_args.read_yaml(tmp_path / "model" / lf.EFFECTIVE_ARGUMENTS_FILE)
    assert effective == args
    # The tracked YAML stays what the config made it: the launch's addition is in the record.
    assert "deepspeed" not in lf_args.read_yaml(tmp_path / "train_base.yaml")


def test_a_deepspeed_choice_in_the_hyperparameters_wins(tmp_path, fake_llamafactory):
    lf.run_training(write_full_config(tmp_path, deepspeed=None), tmp_path / "model", gpus=4)
    ((listing, _, _, args),) = fake_llamafactory
    assert args["deepspeed"] is None and lf.DEEPSPEED_CONFIG_FILE not in listing


def test_without_cuda_several_processes_train_on_the_cpu_over_gloo_without_zero3(
    tmp_path, fake_llamafactory, monkeypatch, capsys
):
    monkeypatch.setattr(lf, "_cuda_available", lambda: False)
    # SLURM's fake GPUs in CI: two granted, one per node, and no CUDA behind them.
    record = lf.run_training(write_full_config(tmp_path), tmp_path / "model", gpus=2, nodes=2)
    ((listing, launch, nodes, args),) = fake_llamafactory
    assert (launch.nproc_per_node, nodes) == (1, 2)
    assert args["ddp_backend"] == "gloo" and "deepspeed" not in args
    assert lf.DEEPSPEED_CONFIG_FILE not in listing and record["deepspeed"] is None
    assert lf_args.read_yaml(tmp_path / "model" / lf.EFFECTIVE_ARGUMENTS_FILE)["ddp_backend"] == "gloo"
    assert "no CUDA device: 2 processes on the CPU, DDP over gloo" in capsys.readouterr().err
    # A backend the user chose wins; one process needs none.
    lf.run_training(write_full_config(tmp_path, ddp_backend="mpi"), tmp_path / "model2", gpus=2, nodes=2)
    lf.run_training(write_full_config(tmp_path), tmp_path / "model3", gpus=1)
    assert [args.get("ddp_backend") for *_, args in fake_llamafactory[1:]] == ["mpi", None]


def test_several_nodes_start_one_launcher_per_node_through_srun(tmp_path, monkeypatch, capsys):
    calls = []

    def run(command, **kwargs):
        calls.append(command)
        return lf.subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(lf.subprocess, "run", run)
    config = tmp_path / "args.yaml"
    lf._launch_training(config, {}, lf.Launch(nnodes=1, nproc_per_node=8), nodes=3)
    (command,) = calls
    assert command[:8] == [
        "srun",
        "--nodes=3",
        "--ntasks=3",
        "--ntasks-per-node=1",
        "--overlap",
        "--kill-on-bad-exit=1",
        "--label",
        "--gpus-per-node=8",
    ]
    assert command[8:] == [
        lf.sys.executable,
        "-m",
        "shadowft.training",
        "node-launch",
        str(config),
        "--nodes",
        "3",
        "--gpus-per-node",
        "8",
    ]


def test_a_failed_node_fails_the_training_naming_the_nodes_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(lf.subprocess, "run", lambda command, **kwargs: lf.subprocess.CompletedProcess(command, 137))
    with pytest.raises(lf.LaunchError, match=r"over 2 nodes failed: srun exited with 137; .*\(0: to 1:\)"):
        lf._launch_training(tmp_path / "args.yaml", {}, lf.Launch(nnodes=1, nproc_per_node=1), nodes=2)


def test_each_node_starts_torchrun_with_a_training_rank_per_process(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(lf.subprocess, "run", lambda command, **kwargs: calls.append((command, kwargs["env"])))
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "backend:native")
    slurm = {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_NODEID": "1"}
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    lf.launch_node(tmp_path / "args.yaml", nodes=2, gpus_per_node=4)
    ((command, env),) = calls
    assert command[:3] == [lf.sys.executable, "-m", "torch.distributed.run"]
    assert command[3:-4] == lf.Launch(2, 4, 1, "n1", 20007).torchrun_options()
    assert command[-4:] == ["-m", "shadowft.training", "rank", str(tmp_path / "args.yaml")]
    # LLaMA-Factory's launcher's settings for its processes, under the job's own.
    assert (env["TORCH_NCCL_AVOID_RECORD_STREAMS"], env["PYTORCH_CUDA_ALLOC_CONF"]) == ("1", "backend:native")
    # The node says where it sits in the rendezvous.
    logged = capsys.readouterr().err
    assert "(SLURM_NODEID=1): NNODES=2 NODE_RANK=1 NPROC_PER_NODE=4 MASTER_ADDR=n1 MASTER_PORT=20007" in logged


def test_each_rank_says_where_it_sits_and_trains_from_the_yaml(tmp_path, monkeypatch, capsys):
    trained = []
    # LLaMA-Factory is the train environment's: stood in for.
    tuner = types.SimpleNamespace(run_exp=lambda args: trained.append(args))
    for name, module in [("llamafactory", types.SimpleNamespace()), ("llamafactory.train", types.SimpleNamespace())]:
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "llamafactory.train.tuner", tuner)
    config = write_config(tmp_path)
    ranks = {"RANK": "3", "WORLD_SIZE": "4", "GROUP_RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "n1"}
    for name, value in ranks.items():
        monkeypatch.setenv(name, value)
    lf.run_rank(config)
    assert trained == [lf_args.read_yaml(config)]
    logged = capsys.readouterr().err
    assert "RANK=3 WORLD_SIZE=4 GROUP_RANK=1 LOCAL_RANK=1 MASTER_ADDR=n1 MASTER_PORT=(unset)" in logged


def test_a_rank_on_cpus_reads_back_a_checkpoint_onto_its_indexed_cpu_device(tmp_path):
    # What the Trainer does resuming a run of several CPU processes: torch.load onto "cpu:0"
    # (accelerate's name for the device), in a process of its own as a rank is.
    load = (
        "import sys, torch\n"
        "torch.save({'exp_avg': torch.ones(2)}, 'optimizer.pt')\n"
        "if sys.argv[1] == 'allowed':\n"
        "    from shadowft.training.llamafactory import allow_indexed_cpu_locations\n"
        "    allow_indexed_cpu_locations(); allow_indexed_cpu_locations()\n"
        "state = torch.load('optimizer.pt', map_location=torch.device('cpu', 0), weights_only=True)\n"
        "assert torch.equal(state['exp_avg'], torch.ones(2)) and state['exp_avg'].device.type == 'cpu'\n"
    )

    def rank(*argv, **options):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.run([sys.executable, "-c", load, *argv], cwd=tmp_path, env=env, text=True, **options)

    refused = rank("as-is", capture_output=True)
    assert "don't know how to restore data location" in refused.stderr and "cpu:0" in refused.stderr
    rank("allowed", check=True)


def test_gpus_are_spread_evenly_over_the_nodes(tmp_path, fake_llamafactory):
    lf.run_training(write_full_config(tmp_path), tmp_path / "model", gpus=24, nodes=3)
    ((_, launch, nodes, args),) = fake_llamafactory
    assert (launch.nproc_per_node, nodes) == (8, 3)
    assert args["deepspeed"].endswith(lf.DEEPSPEED_CONFIG_FILE)
    with pytest.raises(ValueError, match="5 GPUs over 2 nodes"):
        lf.run_training(write_full_config(tmp_path), tmp_path / "model2", gpus=5, nodes=2)
