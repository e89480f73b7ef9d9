"""Training launches derived from what SLURM gave the job: processes, nodes, rendezvous, ZeRO-3."""

import socket
import subprocess
import sys
import time

import pytest

from shadowft.training import launch as launch_module
from shadowft.training.launch import (
    RENDEZVOUS_PORTS,
    RENDEZVOUS_TIMEOUT_S,
    Launch,
    LaunchError,
    launch_from_slurm,
    slurm_hostnames,
    srun_command,
    uses_zero3,
)

# What SLURM sets in each task of a 3-node job (node rank 2 shown), as sbatch/srun document it.
THREE_NODES = {
    "SLURM_JOB_ID": "4711",
    "SLURM_JOB_NUM_NODES": "3",
    "SLURM_JOB_NODELIST": "gpu[07-08],gpu11",
    "SLURM_NODEID": "2",
    "SLURM_PROCID": "2",
}


def test_one_node_trains_with_a_process_per_gpu_and_lets_torchrun_pick_the_port():
    launch = launch_from_slurm({}, nodes=1, gpus_per_node=4)
    assert launch == Launch(nnodes=1, nproc_per_node=4)
    assert launch.torchrun_options() == ["--nnodes=1", "--nproc-per-node=4", "--standalone", "--max-restarts=0"]
    assert launch.rendezvous() == {"NNODES": "1", "NODE_RANK": "0", "NPROC_PER_NODE": "4"}
    assert not launch.in_process


def test_no_gpu_or_one_gpu_trains_in_process():
    assert launch_from_slurm({}, nodes=1, gpus_per_node=0).in_process
    assert launch_from_slurm({}, nodes=1, gpus_per_node=1).in_process


def test_each_node_of_a_multi_node_job_derives_the_same_rendezvous_and_its_own_rank():
    ranks = []
    for node_id in range(3):
        launch = launch_from_slurm({**THREE_NODES, "SLURM_NODEID": str(node_id)}, nodes=3, gpus_per_node=8)
        env = launch.rendezvous()
        assert (env["NNODES"], env["NPROC_PER_NODE"], env["MASTER_ADDR"]) == ("3", "8", "gpu07")
        assert env["MASTER_PORT"] == str(20000 + 4711)
        ranks.append(env["NODE_RANK"])
    assert ranks == ["0", "1", "2"]
    assert launch.world_size == 24


def test_torchrun_is_told_the_nodes_rank_and_master_waits_a_bounded_time_and_never_restarts():
    launch = launch_from_slurm({**THREE_NODES, "SLURM_NODEID": "1"}, nodes=3, gpus_per_node=8)
    assert launch.torchrun_options() == [
        "--nnodes=3",
        "--nproc-per-node=8",
        "--node-rank=1",
        "--master-addr=gpu07",
        f"--master-port={20000 + 4711}",
        f"--rdzv-conf=timeout={RENDEZVOUS_TIMEOUT_S}",
        "--max-restarts=0",
    ]


def test_the_port_stays_in_the_user_range_for_any_job_id():
    for job_id in (0, 11999, 12000, 987654321):
        launch = launch_from_slurm({**THREE_NODES, "SLURM_JOB_ID": str(job_id)}, nodes=3, gpus_per_node=8)
        assert launch.master_port in RENDEZVOUS_PORTS


def test_older_slurm_variable_names_are_read_too():
    env = {"SLURM_JOBID": "5", "SLURM_NNODES": "2", "SLURM_NODELIST": "a,b", "SLURM_NODEID": "1"}
    assert launch_from_slurm(env, nodes=2, gpus_per_node=2) == Launch(2, 2, 1, "a", 20005)


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "SLURM_JOB_NUM_NODES or SLURM_NNODES is not set"),
        ({**THREE_NODES, "SLURM_JOB_NUM_NODES": "2"}, "asked for 3 nodes but SLURM allocated 2"),
        ({k: v for k, v in THREE_NODES.items() if k != "SLURM_JOB_NODELIST"}, "SLURM_JOB_NODELIST is not set"),
        ({**THREE_NODES, "SLURM_NODEID": "x"}, "SLURM_NODEID='x' is not a whole number"),
        ({**THREE_NODES, "SLURM_NODEID": "3"}, "node_rank 3 is not in 0..2"),
    ],
)
def test_an_environment_that_does_not_describe_the_job_is_an_error_naming_the_variable(env, message):
    with pytest.raises((LaunchError, ValueError), match=message):
        launch_from_slurm(env, nodes=3, gpus_per_node=8)


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("node1", ["node1"]),
        ("gpu[1-3]", ["gpu1", "gpu2", "gpu3"]),
        ("gpu[08-10]", ["gpu08", "gpu09", "gpu10"]),
        ("gpu[01-02,07],login1", ["gpu01", "gpu02", "gpu07", "login1"]),
        ("a[1,3]-ib,b2", ["a1-ib", "a3-ib", "b2"]),
    ],
)
def test_slurm_node_lists_expand_as_scontrol_show_hostnames_does(nodelist, hosts):
    assert slurm_hostnames(nodelist) == hosts


@pytest.mark.parametrize("nodelist", ["gpu[3-1]", "gpu[1-", "gpu[a-b]", "gpu[1]x[2]", ""])
def test_an_unreadable_node_list_is_an_error(nodelist):
    with pytest.raises(LaunchError, match="cannot read the SLURM node list"):
        slurm_hostnames(nodelist)


def test_zero3_for_full_tuning_on_several_gpus_and_for_lora_only_when_one_gpu_cannot_hold_it():
    assert uses_zero3("full", 2)
    assert not uses_zero3("full", 1)
    assert not uses_zero3("lora", 4)
    assert uses_zero3("lora", 4, lora_fits_one_gpu=False)
    assert not uses_zero3("lora", 1, lora_fits_one_gpu=False)
    with pytest.raises(ValueError, match="tuning must be lora or full"):
        uses_zero3("qlora", 2)


def test_srun_starts_one_launcher_per_node_sharing_the_jobs_resources():
    assert srun_command(2, 4) == [
        "srun",
        "--nodes=2",
        "--ntasks=2",
        "--ntasks-per-node=1",
        "--overlap",
        "--kill-on-bad-exit=1",
        "--label",
        "--gpus-per-node=4",
    ]
    assert "--gpus-per-node=0" not in srun_command(2, 0)


@pytest.mark.slow
def test_a_rendezvous_that_misses_a_node_fails_on_both_sides_after_its_timeout(tmp_path, monkeypatch):
    """torchrun itself, with the options of a two-node launch: a first node whose peer never
    comes, and a second node whose master never answers, each give up after the rendezvous
    timeout (shortened here) instead of waiting, and start no training process."""
    monkeypatch.setattr(launch_module, "RENDEZVOUS_TIMEOUT_S", 5)
    with socket.socket() as first, socket.socket() as other:
        first.bind(("127.0.0.1", 0))
        other.bind(("127.0.0.1", 0))
        port, unanswered = first.getsockname()[1], other.getsockname()[1]
    rank = tmp_path / "rank.py"
    rank.write_text("print('rank started')\n")

    def node(node_rank, master_port):
        launch = Launch(
            nnodes=2, nproc_per_node=1, node_rank=node_rank, master_addr="127.0.0.1", master_port=master_port
        )
        command = [sys.executable, "-m", "torch.distributed.run", *launch.torchrun_options(), str(rank)]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    started = time.monotonic()
    # The first node alone; the second at a port where no master listens.
    alone = [node(0, port), node(1, unanswered)]
    said = [process.communicate(timeout=120)[0] for process in alone]
    # Measured: 7 s for the first node, 12 s for the second (torch's import included).
    assert time.monotonic() - started < 60
    assert all(process.returncode != 0 for process in alone), said
    assert "Timed out after" in said[0] and "1/2 clients joined" in said[0], said[0][-2000:]
    assert "timed out after 5000ms while trying to connect" in said[1], said[1][-2000:]
    assert not any("rank started" in output for output in said)
