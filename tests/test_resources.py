"""Job sizing: GPUs, nodes, memory and time from the model's parameter count and the node."""

import math

import pytest
from model_fixtures import write_sparse_model

from shadowft.training.resources import (
    GIB,
    MIB,
    Node,
    SizingError,
    Workload,
    count_parameters,
    dataset_tokens,
    fits_one_gpu,
    node_from_resources,
    size_job,
)

H100_NODE = Node(gpus=8, cpus=64, mem_mb=512000, gpu_mem_mb=81920, max_nodes=4, max_runtime=2880)
USABLE_GIB = 0.9 * 80  # of an 80 GiB card


def test_full_tuning_of_4b_shards_18_bytes_a_parameter_over_two_gpus():
    # 18 B x 4e9 = 67.1 GiB of state; reserve 6 + 0.2 x 4 = 6.8 GiB; 72 - 6.8 = 65.2 GiB per GPU.
    size = size_job(Workload.TRAIN_FULL, 4_000_000_000, H100_NODE)
    assert (size.gpu, size.nodes) == (2, 1)
    assert 18 * 4e9 / GIB > USABLE_GIB - 6.8  # one GPU would not do


def test_lora_of_8b_fits_one_gpu_and_full_needs_three():
    assert size_job(Workload.TRAIN_LORA, 8_000_000_000, H100_NODE).gpu == 1
    # 18 x 8e9 = 134.1 GiB over 72 - 7.6 = 64.4 GiB per GPU: 3 GPUs.
    assert size_job(Workload.TRAIN_FULL, 8_000_000_000, H100_NODE).gpu == 3


def test_lora_shards_only_when_one_gpu_cannot_hold_the_base_weights():
    assert fits_one_gpu(Workload.TRAIN_LORA, 14_000_000_000, 81920)  # 26 GiB + 8.8 GiB
    assert not fits_one_gpu(Workload.TRAIN_LORA, 32_000_000_000, 81920)  # 59.6 GiB + 12.4 GiB > 72
    assert size_job(Workload.TRAIN_LORA, 32_000_000_000, H100_NODE).gpu == 2


def test_a_model_too_large_for_one_node_spans_nodes_for_full_tuning_only():
    size = size_job(Workload.TRAIN_FULL, 70_000_000_000, H100_NODE)
    # 18 x 70e9 = 1173 GiB over 72 - 20 = 52 GiB per GPU: 23 GPUs -> 3 nodes of 8.
    assert (size.nodes, size.gpus_per_node, size.gpu) == (3, 8, 24)
    assert size.gpu >= math.ceil(18 * 70e9 / ((USABLE_GIB - 20) * GIB))
    one_node = Node(gpus=8, cpus=64, mem_mb=512000, gpu_mem_mb=81920, max_nodes=1)
    with pytest.raises(SizingError, match=r"70\.00 B-parameter model needs 23 GPUs \(3 nodes\).*at most 1 node"):
        size_job(Workload.TRAIN_FULL, 70_000_000_000, one_node)


def test_a_spread_the_profile_asks_for_is_sized_for_and_checked_against_the_node():
    # LoRA of 8 B fits one GPU; asked to spread over 2 nodes, 4 GPUs each, it is sized for them.
    size = size_job(Workload.TRAIN_LORA, 8_000_000_000, H100_NODE, gpu=8, nodes=2)
    assert (size.gpu, size.nodes, size.gpus_per_node) == (8, 2, 4)
    # Host memory per node is the node's share: 4 GiB, 4 GiB per GPU, 4 bytes a parameter.
    assert size.mem_mb == math.ceil((4 * GIB + 4 * 4 * GIB + 4 * 8e9) / MIB)
    # Time: the compute shared by the 8 GPUs.
    one_gpu = size_job(Workload.TRAIN_LORA, 8_000_000_000, H100_NODE, tokens=1e8)
    eight = size_job(Workload.TRAIN_LORA, 8_000_000_000, H100_NODE, tokens=1e8, gpu=8, nodes=2)
    assert eight.runtime - 20 == math.ceil((one_gpu.runtime - 20) / 8)
    # Either may be left out: nodes as many as the GPUs need, GPUs the estimate's over the nodes.
    assert size_job(Workload.TRAIN_FULL, 8_000_000_000, H100_NODE, gpu=16).nodes == 2
    assert size_job(Workload.TRAIN_LORA, 8_000_000_000, H100_NODE, nodes=2).gpu == 2
    for spread, problem in [
        ({"gpu": 3, "nodes": 2}, r"3 GPU\(s\) over 2 node\(s\): the GPUs must spread evenly"),
        ({"gpu": 18, "nodes": 2}, r"18 GPU\(s\) over 2 node\(s\), but the profile allows a node with 8 GPU"),
        ({"gpu": 40}, r"40 GPU\(s\) over 5 node\(s\), but the profile allows .*at most 4 node"),
        ({"nodes": 0}, "for 0 nodes: a job runs on at least one"),
        ({"gpu": -1}, r"train_lora's gpu -1 must be a whole number"),
    ]:
        with pytest.raises(SizingError, match=problem):
            size_job(Workload.TRAIN_LORA, 8_000_000_000, H100_NODE, **spread)
    with pytest.raises(SizingError, match=r"evaluate for 2 GPU\(s\) over 2 node\(s\), but only training spans nodes"):
        size_job(Workload.EVALUATE, 8_000_000_000, H100_NODE, gpu=2, nodes=2)


def test_evaluation_of_a_model_that_no_node_holds_is_refused_naming_the_node():
    small = Node(gpus=2, cpus=16, mem_mb=128000, gpu_mem_mb=40960)
    # 2 x 70e9 = 130.4 GiB over 36 - 23.5 GiB of KV-cache reserve = 12.5 GiB per GPU: 11 GPUs.
    with pytest.raises(
        SizingError, match=r"evaluate of a 70\.00 B-parameter model needs 11 GPUs on one node.*2 GPU\(s\) of 40960 MB"
    ):
        size_job(Workload.EVALUATE, 70_000_000_000, small)


def test_host_memory_beyond_the_node_is_refused_on_the_first_attempt_and_capped_on_retries():
    node = Node(gpus=8, cpus=64, mem_mb=40000, gpu_mem_mb=81920)
    # 3 GPUs: 4 GiB + 3 x 4 GiB + 4 B a parameter.
    needed = math.ceil((16 * GIB + 4 * 8e9) / MIB)
    with pytest.raises(SizingError, match=f"needs {needed} MB of host memory per node"):
        size_job(Workload.TRAIN_FULL, 8_000_000_000, node)
    roomy = Node(gpus=8, cpus=64, mem_mb=60000, gpu_mem_mb=81920)
    first = size_job(Workload.TRAIN_FULL, 8_000_000_000, roomy)
    assert size_job(Workload.TRAIN_FULL, 8_000_000_000, roomy, attempt=2).mem_mb == roomy.mem_mb > first.mem_mb


def test_dpo_is_sized_like_training_of_its_tuning_plus_a_reference_model():
    assert Workload.training("full", "dpo") is Workload.DPO_FULL
    assert Workload.training("lora", "dpo") is Workload.DPO_LORA
    assert Workload.training("lora") is Workload.TRAIN_LORA
    # Full DPO holds a frozen bf16 copy too: 20 B x 4e9 = 74.5 GiB over 65.2 GiB per GPU, still 2 GPUs,
    # and one more bf16 model on the host. 3.6e9 parameters fit one GPU (65.3 GiB) at 18 B (60.4 GiB),
    # not at 20 B (67.1 GiB).
    sft, dpo = (size_job(workload, 4_000_000_000, H100_NODE) for workload in (Workload.TRAIN_FULL, Workload.DPO_FULL))
    assert (dpo.gpu, dpo.nodes) == (sft.gpu, sft.nodes) == (2, 1)
    assert dpo.mem_mb == sft.mem_mb + math.ceil(2 * 4e9 / MIB)
    assert size_job(Workload.TRAIN_FULL, 3_600_000_000, H100_NODE).gpu == 1
    assert size_job(Workload.DPO_FULL, 3_600_000_000, H100_NODE).gpu == 2
    # LoRA DPO's reference is the base without the adapter: LoRA's memory, a forward pass more of time.
    lora, lora_dpo = (
        size_job(w, 4_000_000_000, H100_NODE, tokens=8e6) for w in (Workload.TRAIN_LORA, Workload.DPO_LORA)
    )
    assert (lora_dpo.gpu, lora_dpo.mem_mb) == (lora.gpu, lora.mem_mb)
    assert lora_dpo.runtime == 20 + math.ceil(2 * 8 * 4e9 * 8e6 / 1e14 / 60) > lora.runtime
    # Full DPO spans nodes like full SFT.
    assert size_job(Workload.DPO_FULL, 70_000_000_000, H100_NODE).nodes == 4


def test_memory_and_time_grow_with_the_attempt():
    first = size_job(Workload.TRAIN_LORA, 4_000_000_000, H100_NODE, tokens=8e6)
    second = size_job(Workload.TRAIN_LORA, 4_000_000_000, H100_NODE, tokens=8e6, attempt=2)
    assert second.mem_mb == pytest.approx(2 * first.mem_mb, abs=1)
    assert second.runtime == 2 * first.runtime
    assert second.gpu == first.gpu


def test_training_time_follows_the_compute_and_stops_at_the_partition_limit():
    # LoRA: 6 x 4e9 FLOP per token x 8e6 tokens at 1e14 FLOP/s = 1920 s, doubled = 64 min, + 20.
    assert size_job(Workload.TRAIN_LORA, 4_000_000_000, H100_NODE, tokens=8e6).runtime == 20 + 64
    # A thousand times the data would take longer than the partition allows.
    assert size_job(Workload.TRAIN_LORA, 4_000_000_000, H100_NODE, tokens=8e9).runtime == 2880


def test_host_memory_of_a_job():
    # LoRA of 4e9 on one GPU: 4 GiB + 4 GiB for the GPU's process + 4 B a parameter.
    expected = math.ceil((8 * GIB + 4 * 4e9) / MIB)
    assert size_job(Workload.TRAIN_LORA, 4_000_000_000, H100_NODE).mem_mb == expected


def test_cpu_work_asks_for_no_gpu_and_the_engines_bounded_memory():
    for workload in (Workload.ENGINE, Workload.MERGE):
        assert size_job(workload, 8_000_000_000, H100_NODE).gpu == 0
    assert size_job(Workload.ENGINE, 8_000_000_000, H100_NODE).mem_mb == 2048
    assert size_job(Workload.ENGINE, 70_000_000_000, H100_NODE).mem_mb == 2048


def test_a_cpu_only_node_trains_on_its_cpus():
    node = Node(gpus=0, cpus=2, mem_mb=20000)
    size = size_job(Workload.TRAIN_FULL, 170_000, node)
    assert (size.gpu, size.nodes) == (0, 1)
    assert node.cpus_per_gpu == 2


def test_node_description_from_a_profiles_default_resources():
    node = node_from_resources(
        {
            "node_gpus": 4,
            "node_cpus": 32,
            "node_mem_mb": 256000,
            "node_gpu_mem_mb": 40960,
            "max_nodes": 2,
            "max_runtime": 1440,
            "mem_mb": 1000,
        }
    )
    assert node == Node(gpus=4, cpus=32, mem_mb=256000, gpu_mem_mb=40960, max_nodes=2, max_runtime=1440)
    assert node.cpus_per_gpu == 8
    assert node_from_resources({"mem_mb": 1000, "runtime": 30}) is None
    with pytest.raises(ValueError, match="node_cpus, node_mem_mb missing"):
        node_from_resources({"node_gpus": 4})
    with pytest.raises(ValueError, match="node_gpu_mem_mb"):
        node_from_resources({"node_gpus": 4, "node_cpus": 32, "node_mem_mb": 256000})
    with pytest.raises(ValueError, match="node cpus: '8' must be a whole number"):
        node_from_resources({"node_gpus": 0, "node_cpus": "8", "node_mem_mb": 256000})


def test_parameters_are_read_from_the_checkpoint_headers(tmp_path):
    folder = write_sparse_model(tmp_path / "model", 4_022_468_096)
    assert count_parameters(folder) == 4_022_468_096
    # The data region is a hole: the model costs kilobytes, not 8 GB.
    assert sum(path.stat().st_blocks * 512 for path in folder.iterdir()) < 1 << 20


def test_pickle_weights_are_sized_from_their_bytes_without_unpickling(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80" * 2000)  # not a valid pickle: never loaded
    assert count_parameters(tmp_path) == 1000


def test_a_folder_without_weights_is_an_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match=f"cannot size jobs for {tmp_path}"):
        count_parameters(tmp_path)


def test_dataset_tokens_are_estimated_from_the_bytes(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "train.json").write_bytes(b"x" * 3000)
    (tmp_path / "sub" / "more.json").write_bytes(b"x" * 300)
    assert dataset_tokens(tmp_path) == 1100
