"""The pair check that runs before any training: each wrong pair or broken file is named."""

import json
import shutil

import pytest
import torch
import yaml
from conftest import demo_runs, snakemake
from delta_fixtures import llama, load_tensors, qwen2, read_json  # noqa: F401
from model_fixtures import local_pair_experiment
from safetensors.torch import save_file

from shadowft.engine.layout import CheckpointError
from shadowft.engine.preflight import PreflightError, check_pair, write_pair_check


def single_file_copy(source, destination, transform=None, config=None):
    """`source` as one model.safetensors (after `transform`), with config.json patched."""
    destination.mkdir(parents=True)
    tensors = load_tensors(source)
    tensors = transform(tensors) if transform else tensors
    save_file(tensors, destination / "model.safetensors", metadata={"format": "pt"})
    (destination / "config.json").write_text(json.dumps({**read_json(source / "config.json"), **(config or {})}))
    return destination


def test_a_matching_pair_passes_and_is_recorded(llama, tmp_path):
    check = write_pair_check(
        llama.base, llama.instruct, tmp_path / "check.json", vocab_mismatch="error", allow_pickle=False
    )
    tensors = load_tensors(llama.instruct)
    assert check.tensors == len(tensors)
    assert check.parameters == sum(t.numel() for t in tensors.values())
    assert read_json(tmp_path / "check.json")["vocab_rows"] is None


def test_a_tied_base_with_an_untied_instruct_passes(qwen2, tmp_path):
    untied = single_file_copy(
        qwen2.instruct,
        tmp_path / "untied",
        lambda t: {**t, "lm_head.weight": t["model.embed_tokens.weight"].clone()},
        {"tie_word_embeddings": False},
    )
    assert check_pair(qwen2.base, untied).tensors == len(load_tensors(qwen2.base))


# An instruct model that is not the base's: the check_pair job refuses it before any training.
ANOTHER_MODEL = pytest.mark.bad_input("model", caught="check")


@pytest.mark.parametrize(
    "config, named",
    [
        pytest.param({"hidden_size": 64}, "differ in hidden_size: 32 against 64", marks=ANOTHER_MODEL),
        pytest.param({"num_hidden_layers": 3}, "num_hidden_layers", marks=ANOTHER_MODEL),
        pytest.param({"model_type": "mistral"}, "model_type", marks=ANOTHER_MODEL),
        pytest.param({"architectures": ["MistralForCausalLM"]}, "architectures", marks=ANOTHER_MODEL),
        ({"text_config": {"hidden_size": 8}}, None),
    ],
)
def test_another_architecture_is_named_by_its_config_key(llama, tmp_path, config, named):
    other = single_file_copy(llama.instruct, tmp_path / "other", config=config)
    if named is None:  # a nested config only one side has says nothing about the other
        check_pair(llama.base, other)
        return
    with pytest.raises(PreflightError, match=named):
        check_pair(llama.base, other)


@pytest.mark.bad_input("model", caught="check")
def test_nested_text_configs_are_compared(llama, tmp_path):
    base = single_file_copy(llama.base, tmp_path / "base", config={"text_config": {"hidden_size": 32}})
    other = single_file_copy(llama.instruct, tmp_path / "other", config={"text_config": {"hidden_size": 48}})
    with pytest.raises(PreflightError, match="text_config.hidden_size"):
        check_pair(base, other)


@pytest.mark.bad_input("model", caught="check")
def test_a_tensor_only_one_model_has_is_named(llama, tmp_path):
    short = single_file_copy(
        llama.instruct, tmp_path / "short", lambda t: {n: v for n, v in t.items() if "layers.1.mlp.up_proj" not in n}
    )
    with pytest.raises(PreflightError, match=r"short: has no tensor 'model.layers.1.mlp.up_proj.weight'"):
        check_pair(llama.base, short)


@pytest.mark.bad_input("model", caught="check")
def test_a_reshaped_tensor_is_named(llama, tmp_path):
    name = "model.layers.0.self_attn.o_proj.weight"
    odd = single_file_copy(llama.instruct, tmp_path / "odd", lambda t: {**t, name: t[name][:, :16].contiguous()})
    with pytest.raises(PreflightError, match=rf"shape mismatch for '{name}'"):
        check_pair(llama.base, odd)


@pytest.mark.bad_input("model", caught="check")
def test_vocabulary_sizes_follow_the_graft_policy(llama, tmp_path):
    def widen(tensors):
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            tensors[name] = torch.cat([tensors[name], torch.zeros(4, tensors[name].shape[1]).bfloat16()])
        return tensors

    wide = single_file_copy(llama.instruct, tmp_path / "wide", widen, {"vocab_size": 100})
    with pytest.raises(PreflightError, match="vocab_mismatch='shared'"):
        check_pair(llama.base, wide)
    assert check_pair(llama.base, wide, vocab_mismatch="shared").vocab_rows == (96, 100)


@pytest.mark.bad_input("model", caught="check")
def test_broken_weight_files_are_named(llama, tmp_path):
    truncated = single_file_copy(llama.instruct, tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"truncated.*model.safetensors|model.safetensors.*truncated"):
        check_pair(llama.base, truncated)

    missing_shard = tmp_path / "missing_shard"
    shutil.copytree(llama.base, missing_shard)
    index = read_json(missing_shard / "model.safetensors.index.json")
    shard = sorted(set(index["weight_map"].values()))[-1]
    (missing_shard / shard).unlink()
    with pytest.raises(CheckpointError, match=rf"lists {shard}, which does not exist"):
        check_pair(missing_shard, llama.instruct)


@pytest.mark.bad_input("model", caught="check")
def test_pickle_only_weights_need_the_opt_in_and_a_missing_config_is_named(llama, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save(load_tensors(llama.instruct), pickled / "pytorch_model.bin")
    shutil.copy(llama.instruct / "config.json", pickled / "config.json")
    with pytest.raises(CheckpointError, match="allow_pickle"):
        check_pair(llama.base, pickled)
    assert check_pair(llama.base, pickled, allow_pickle=True).tensors > 0

    (pickled / "config.json").unlink()
    with pytest.raises(PreflightError, match=r"pickled/config.json: missing"):
        check_pair(llama.base, pickled, allow_pickle=True)


RUN = demo_runs()["lora"]


@pytest.mark.slow
@pytest.mark.bad_input("LLaMA-Factory", caught="check")
@pytest.mark.parametrize(
    "edit, named",
    [
        (
            lambda c: c["pairs"]["p"].update(template="qwen33"),
            "pairs.p.template: LLaMA-Factory 0.9.5 has no template 'qwen33' (did you mean 'qwen3'",
        ),
        (
            lambda c: c["training"]["hyperparameters"]["common"].update(warmup_ratoi=0.1),
            "training.hyperparameters.common: unknown LLaMA-Factory argument 'warmup_ratoi' (did you mean "
            "'warmup_ratio'",
        ),
    ],
)
def test_llamafactory_names_are_checked_before_any_download(tmp_path, edit, named):
    """Against the pinned LLaMA-Factory, as the run's first job: nothing is downloaded, and the
    message names the config key that gave the name."""
    config, configfile = local_pair_experiment(tmp_path)
    config["models"] = {role: {"source": "hub", "repo": f"org/{role}", "revision": "0" * 40} for role in ("b", "i")}
    edit(config)
    configfile.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--cores", "1", "--configfile", str(configfile), check=False)
    assert result.returncode != 0
    log = (tmp_path / "logs" / "check" / "llamafactory.log").read_text()
    assert named in log and "Traceback" not in log, log
    assert not (tmp_path / "data" / "models").exists() and not (tmp_path / "logs" / "download_model").exists()
    assert "rule download_model" not in result.stdout + result.stderr
