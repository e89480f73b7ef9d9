"""Model families: every shipped file is valid and plans the paper's DAG, choosing and
overriding a family, and (slow) tiny models of real families' architectures run through
the workflow with their family's file: one LoRA step, extract, graft, one evaluation."""

import collections
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from conftest import ROOT, VENVS, snakemake
from family_fixtures import build_tiny_pair, tiny_sft_dataset
from safetensors.torch import load_file

from shadowft.evaluation.results import read_scores
from shadowft.workflow.config import ConfigError, validate_config
from shadowft.workflow.families import FamilyError, load_family, shipped_families
from shadowft.workflow.sweep import Run

FAMILIES = shipped_families()
REQUIRED = [
    "qwen2.5-7b",
    "qwen2.5-14b",
    "qwen3-0.6b",
    "qwen3-4b",
    "qwen3-8b",
    "llama-3.1-8b",
    "gemma-3-4b",
    "falcon3-7b",
    "mistral-7b-v0.3",
    "yi-1.5-9b",
]
PAPER = ROOT / "config" / "paper.yaml"
SLURM_PROFILE = ROOT / "profiles" / "slurm"


# The tiny runs' one run: LoRA at the paper's rate and rank (the schema's defaults), seed 0.
TINY_RUN = Run("sft", "lora", 2.0e-4, 8, 0).name


def result_paths(pair, run=TINY_RUN, alpha="1", benchmark="tiny"):
    """Where the workflow puts one run's outputs (the one place tests name these paths)."""
    return {
        "adapter": f"results/{pair}/{run}/train_base/model",
        "merged_instruct": f"results/{pair}/{run}/train_instruct/merged",
        "shadow": f"results/{pair}/{run}/shadow_a{alpha}",
        "scores": f"results/{pair}/eval/{run}/shadow_a{alpha}/{benchmark}/scores.csv",
    }


def paper_config():
    return yaml.safe_load(PAPER.read_text())


def test_the_required_families_are_shipped():
    assert set(REQUIRED) <= set(FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_file_is_valid_and_makes_a_pair(name):
    family = load_family(name)
    config = paper_config()
    config["families"] = [name]
    validate_config(config)
    assert config["pairs"][name] == {
        "base": f"{name}-base",
        "instruct": f"{name}-instruct",
        "template": family.template,
        "parameters": family.parameters,
        "hyperparameters": family.hyperparameters,
        "chat_template_kwargs": family.chat_template_kwargs,
    }
    assert config["models"][f"{name}-base"] == {
        "source": "hub",
        "repo": family.base.repo,
        "revision": family.base.revision,
        "trust_remote_code": False,
        "allow_pickle": False,
    }
    assert config["models"][f"{name}-instruct"]["repo"] == family.instruct.repo
    assert family.base.repo != family.instruct.repo
    # Gated families say so (the token comes from HF_TOKEN), the others need no token.
    assert family.gated == (family.base.repo.split("/")[0] in ("meta-llama", "google", "mistralai"))
    if family.gated:
        assert "HF_TOKEN" in (ROOT / "config" / "families" / f"{name}.yaml").read_text()


@pytest.mark.slow
def test_every_template_is_one_llamafactory_registers():
    """The installed LLaMA-Factory's own registry, asked in the train environment."""
    script = "import json; from llamafactory.data.template import TEMPLATES; print(json.dumps(sorted(TEMPLATES)))"
    result = subprocess.run(
        [str(VENVS / "train" / "bin" / "python"), "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    registered = set(json.loads(result.stdout.strip().splitlines()[-1]))
    templates = {name: load_family(name).template for name in FAMILIES}
    assert {name: template for name, template in templates.items() if template not in registered} == {}


@pytest.mark.bad_input("family", caught="plan")
def test_an_unknown_family_lists_the_shipped_ones_and_suggests_the_closest():
    config = paper_config()
    config["families"] = ["qwen3-4B"]
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    message = str(error.value)
    assert "unknown family 'qwen3-4B'" in message and "did you mean 'qwen3-4b'" in message
    assert all(name in message for name in FAMILIES)


def test_family_overrides_change_one_family_only(tmp_path):
    weights = tmp_path / "Qwen3-4B"
    weights.mkdir()
    config = paper_config()
    config["families"] = ["qwen3-4b", "llama-3.1-8b"]
    config["family_overrides"] = {
        "qwen3-4b": {
            "hyperparameters": {"lora": {"lora_dropout": 0.1}, "common": {"cutoff_len": 2048}},
            "base": {"revision": "0123abc"},
            "instruct": {"source": "local", "path": str(weights)},
            "template": "qwen3_nothink",
        }
    }
    validate_config(config)
    assert config["pairs"]["qwen3-4b"]["template"] == "qwen3_nothink"
    assert config["pairs"]["llama-3.1-8b"]["template"] == "llama3"
    assert config["pairs"]["qwen3-4b"]["hyperparameters"] == {
        "common": {"enable_thinking": False, "cutoff_len": 2048},
        "lora": {"lora_dropout": 0.1},
    }
    assert config["models"]["qwen3-4b-base"]["revision"] == "0123abc"
    assert config["models"]["qwen3-4b-instruct"] == {
        "source": "local",
        "path": str(weights),
        "trust_remote_code": False,
    }
    assert config["pairs"]["llama-3.1-8b"]["hyperparameters"] == {}
    assert config["models"]["llama-3.1-8b-base"]["revision"] == load_family("llama-3.1-8b").base.revision


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"qwen3-8b": {}}, "family_overrides.qwen3-8b"),
        ({"qwen3-4b": {"hyperparameters": {"lorra": {}}}}, "lorra"),
        ({"qwen3-4b": {"base": {"source": "local"}}}, "family_overrides.qwen3-4b.base"),
    ],
)
@pytest.mark.bad_input("family", caught="plan")
def test_a_bad_family_override_is_named(overrides, named):
    config = paper_config()
    config["family_overrides"] = overrides
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert named in str(error.value)


@pytest.mark.bad_input("family", caught="plan")
@pytest.mark.parametrize(
    "section, entry, named",
    [
        ("pairs", {"base": "a", "instruct": "b", "template": "qwen"}, "makes pair 'qwen3-4b', which pairs already"),
        ("models", {"source": "hub", "repo": "o/m"}, "makes model 'qwen3-4b-base', which models already"),
    ],
)
def test_a_family_that_makes_a_name_the_config_already_has_is_named(section, entry, named):
    """Two pairs (or models) of one name would plan one of them and drop the other silently."""
    config = paper_config()
    config["families"] = ["qwen3-4b"]
    name = "qwen3-4b" if section == "pairs" else "qwen3-4b-base"
    config.setdefault(section, {})[name] = entry
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert named in str(error.value)


@pytest.mark.bad_input("config", caught="plan")
def test_no_pair_at_all_is_an_error():
    config = paper_config()
    config["families"] = []
    with pytest.raises(ConfigError, match="no pair to run"):
        validate_config(config)


@pytest.mark.bad_input("family", caught="plan")
def test_a_family_file_that_breaks_the_schema_is_named(tmp_path):
    text = (ROOT / "config" / "families" / "qwen3-4b.yaml").read_text()
    (tmp_path / "broken.yaml").write_text(text.replace("parameters: 4022468096", "parameters: 4B"))
    with pytest.raises(FamilyError, match=r"broken.yaml is invalid:\n  \$.parameters"):
        load_family("broken", tmp_path)


@pytest.fixture(scope="module")
def paper_plan(tmp_path_factory):
    """The paper's experiment on every shipped family, planned once for the cluster in an empty
    working directory (the paper's plan needs nothing on disk): {pair or "shared": {rule: count}}
    and the dry run's output."""
    output = snakemake(
        tmp_path_factory.mktemp("paper"),
        "-n",
        "--profile",
        str(SLURM_PROFILE),
        "--configfile",
        str(PAPER),
        "--config",
        f"families=[{','.join(FAMILIES)}]",
    ).stdout
    jobs: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for block in output.split("\n\n"):
        rule = re.search(r"^\s*rule (\w+):", block, re.MULTILINE)
        if rule is None:
            continue
        wildcards = dict(re.findall(r"(\w+)=([^,\s]+)", (re.search(r"wildcards: (.*)", block) or [""])[0]))
        owner = wildcards.get("pair") or wildcards.get("model", "").rsplit("-", 1)[0] or "shared"
        jobs[owner][rule.group(1)] += 1
    return jobs, output


@pytest.mark.slow
def test_the_demo_config_is_not_merged_into_a_given_config(paper_plan):
    jobs, output = paper_plan
    assert set(jobs) == {*FAMILIES, "shared"}
    # Not "demo" anywhere: the checkout's own path may hold the word.
    assert not any(mark in output for mark in ("pair=demo", "results/demo/", "data/demo/", "rule build_demo"))
    assert jobs["shared"] == {
        "check_llamafactory_names": 1,
        "download_dataset": 1,
        "prepare_dataset": 1,
        "prefetch_benchmarks": 19,
        "report": 1,
        "environment_versions": 3,  # core, train, lmdeploy
        "all": 1,
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_the_paper_experiment_plans_for_every_family_sized_before_the_download(paper_plan, name):
    jobs, output = paper_plan
    assert jobs[name] == {
        "download_model": 2,
        "training_config": 4,
        "train": 4,
        "merge_adapter": 2,  # the LoRA run's adapters on BASE and on INSTRUCT, each scored merged
        "extract_delta": 2,
        "graft": 2,
        "similarity": 1,
        "overlap": 2,
        "check_pair": 1,
        "evaluate": 8 * 19,  # base, instruct, then per run instruct_ft, base_ft and the graft
        "samples": 19,
        "figures": 1,
        "alpha_figure": 1,
        "training_figure": 1,
        "overlap_figure": 1,
    }
    for block in output.split("\n\n"):
        if block.lstrip().startswith(("rule train:", "rule evaluate:")) and f"pair={name}," in block:
            resources = next(line for line in block.splitlines() if line.strip().startswith("resources:"))
            assert "gpu=<TBD>" not in resources and " gpu=" in resources, block


# The slow half: a family's first GPU hour must not be its first test.
TINY_TRAINING = {
    "max_steps": 1,
    "cutoff_len": 64,
    "bf16": False,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "warmup_ratio": 0.0,
    "save_steps": 1000,
}
TINY_FAMILIES = {"qwen3-4b": "qwen3", "llama-3.1-8b": "llama3", "gemma-3-4b": "gemma3", "mistral-7b-v0.3": "mistral"}


def runtime_state(architecture, folder):
    """The state dict of a model folder as transformers holds it (runtime tensor names)."""
    model = getattr(transformers, architecture).from_pretrained(folder, torch_dtype=torch.float32)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def expected_graft(instruct_state, adapter_dir):
    """instruct + (lora_alpha / r) B @ A per adapted module, with plain torch: {runtime name: tensor}."""
    adapter = load_file(adapter_dir / "adapter_model.safetensors")
    settings = json.loads((adapter_dir / "adapter_config.json").read_text())
    scale = settings["lora_alpha"] / settings["r"]
    expected = {}
    for key, lora_a in adapter.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        lora_b = adapter[key.replace(".lora_A.", ".lora_B.")]
        name = f"{module}.weight"
        expected[name] = instruct_state[name] + scale * (lora_b.float() @ lora_a.float())
    return expected


def tiny_family_run(tmp_path, name):
    """A tiny model of family `name` as its models (family_overrides: local), a tiny dataset, and
    a config that trains one LoRA step and scores on a two-question custom benchmark."""
    base, instruct = build_tiny_pair(TINY_FAMILIES[name], tmp_path / "models")
    data = tiny_sft_dataset(tmp_path / "data")
    config = {
        "families": [name],
        "family_overrides": {
            name: {
                "base": {"source": "local", "path": str(base)},
                "instruct": {"source": "local", "path": str(instruct)},
                "hyperparameters": {"common": TINY_TRAINING},
            }
        },
        "datasets": {"tiny": {"source": "local", "path": str(data)}},
        "training": {"dataset": "tiny", "tunings": ["lora"]},
        "graft": {"alphas": [1.0], "preset": "official"},
        "evaluation": {"benchmarks": {"tiny": {"kind": "custom", "dataset": "tiny", "max_out_len": 4}}},
    }
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(config))
    workdir = tmp_path / "work"
    workdir.mkdir()
    return config_file, workdir, instruct


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY_FAMILIES))
def test_a_tiny_model_of_the_family_runs_lora_extract_graft_and_evaluate(tmp_path, name):
    family = load_family(name)
    config_file, workdir, instruct = tiny_family_run(tmp_path, name)
    paths = result_paths(name)
    started = time.monotonic()
    snakemake(workdir, paths["scores"], "--cores", "2", "--configfile", str(config_file), timeout=600)
    print(f"{name}: tiny LoRA step, extract, graft and evaluation in {time.monotonic() - started:.0f} s")

    # Training used the family's template (and the family's own hyper-parameters).
    arguments = yaml.safe_load((workdir / paths["adapter"] / "shadowft_train_args.yaml").read_text())
    assert arguments["template"] == family.template
    for key, value in family.hyperparameters.get("common", {}).items():
        assert arguments[key] == value
    assert arguments["max_steps"] == 1  # the test's family_overrides, laid over everything else

    # The graft equals instruct + (lora_alpha / r) B @ A, computed here with plain torch.
    instruct_state = runtime_state(family.architecture, instruct)
    expected = expected_graft(instruct_state, workdir / paths["adapter"])
    assert expected, "the adapter adapts nothing"
    shadow_state = runtime_state(family.architecture, workdir / paths["shadow"])
    assert shadow_state.keys() == instruct_state.keys()
    for tensor_name, tensor in shadow_state.items():
        if tensor_name in expected:
            torch.testing.assert_close(tensor, expected[tensor_name], rtol=0, atol=1e-6)
        else:
            assert torch.equal(tensor, instruct_state[tensor_name]), tensor_name
    if family.architecture == "Gemma3ForConditionalGeneration":
        # LoRA target "all" leaves the frozen vision tower and projector alone.
        assert not [key for key in expected if "vision_tower" in key or "multi_modal_projector" in key]
        assert any("vision_tower" in key for key in shadow_state)

    scores = read_scores(workdir / paths["scores"])
    assert [(row["benchmark"], row["num_examples"]) for row in scores] == [("tiny", 2)]
    # The family's chat-template arguments reached evaluation (Qwen3: thinking off).
    (run_config,) = (workdir / paths["scores"]).parent.glob("opencompass/*/shadowft_run.json")
    scored = json.loads(run_config.read_text())["models"][0]["path"]
    if family.chat_template_kwargs:
        tokenizer = transformers.AutoTokenizer.from_pretrained(scored)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "q"}], add_generation_prompt=True)
        expected_prompt = transformers.AutoTokenizer.from_pretrained(instruct).apply_chat_template(
            [{"role": "user", "content": "q"}], add_generation_prompt=True, **family.chat_template_kwargs
        )
        assert prompt == expected_prompt
    else:
        assert Path(scored) == (workdir / paths["shadow"]).resolve()


@pytest.mark.bad_input("checkpoint", caught="job")
def test_adapter_names_resolve_through_a_multimodal_checkpoint_layout():
    """PEFT names Gemma-3's modules as transformers holds them; its checkpoint names them otherwise."""
    from shadowft.engine.adapters import NameResolver
    from shadowft.engine.layout import DeltaError

    checkpoint = [
        "language_model.model.layers.0.self_attn.q_proj.weight",
        "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight",
        "language_model.lm_head.weight",
    ]
    resolve = NameResolver(checkpoint, "the base model")
    runtime = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert resolve(runtime, "key") == checkpoint[0]
    assert resolve("model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight", "key") == checkpoint[1]
    with pytest.raises(DeltaError, match="not in the base model"):
        resolve("model.language_model.layers.1.self_attn.q_proj.weight", "key")


# The published architectures (each base model's config.json on the hub, as its model card
# states it), to check every family's declared `parameters` by a second route: the model
# built on the meta device, no weights. Qwen3-0.6B and 1.7B store the tied lm_head in their
# checkpoints as well; the others store a tied matrix once.
QWEN3 = {"head_dim": 128, "num_key_value_heads": 8, "vocab_size": 151936}
PUBLISHED_ARCHITECTURES = {
    "qwen2.5-7b": ("Qwen2Config", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                   num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False)),
    "qwen2.5-14b": ("Qwen2Config", dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
                    num_attention_heads=40, num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False)),
    "qwen3-0.6b": ("Qwen3Config", dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                   num_attention_heads=16, tie_word_embeddings=True, **QWEN3)),
    "qwen3-1.7b": ("Qwen3Config", dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                   num_attention_heads=16, tie_word_embeddings=True, **QWEN3)),
    "qwen3-4b": ("Qwen3Config", dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                 num_attention_heads=32, tie_word_embeddings=True, **QWEN3)),
    "qwen3-8b": ("Qwen3Config", dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                 num_attention_heads=32, tie_word_embeddings=False, **QWEN3)),
    "llama-3.1-8b": ("LlamaConfig", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)),
    "mistral-7b-v0.3": ("MistralConfig", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8, vocab_size=32768, tie_word_embeddings=False)),
    "falcon3-7b": ("LlamaConfig", dict(hidden_size=3072, intermediate_size=23040, num_hidden_layers=28,
                   num_attention_heads=12, num_key_value_heads=4, head_dim=256, vocab_size=131072,
                   tie_word_embeddings=False)),
    "yi-1.5-9b": ("LlamaConfig", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=48,
                  num_attention_heads=32, num_key_value_heads=4, vocab_size=64000, tie_word_embeddings=False)),
    "gemma-3-4b": ("Gemma3Config", dict(
        text_config=dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
                         num_key_value_heads=4, head_dim=256, vocab_size=262208),
        vision_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                           image_size=896, patch_size=14, vision_use_head=False),
        mm_tokens_per_image=256)),
}  # fmt: skip
PUBLISHED_ARCHITECTURES["qwen3-4b-2507"] = PUBLISHED_ARCHITECTURES["qwen3-4b"]
STORES_TIED_HEAD = {"qwen3-0.6b", "qwen3-1.7b"}


@pytest.mark.parametrize("name", FAMILIES)
def test_declared_parameters_match_the_published_architecture(name):
    family = load_family(name)
    config_class, settings = PUBLISHED_ARCHITECTURES[name]
    config = getattr(transformers, config_class)(**settings)
    with torch.device("meta"):
        model = getattr(transformers, family.architecture)(config)
    unique = sum(parameter.numel() for parameter in model.parameters())
    stored = sum(tensor.numel() for tensor in model.state_dict().values())
    assert family.parameters == (stored if name in STORES_TIED_HEAD else unique)


@pytest.mark.slow
def test_a_tiny_gemma3_instruct_lora_merges_into_the_multimodal_layout(tmp_path):
    """The instruct_ft baseline of Gemma-3: LLaMA-Factory's export with the family's template
    keeps the checkpoint's tensor names, the processor and INSTRUCT's chat template."""
    config_file, workdir, instruct = tiny_family_run(tmp_path, "gemma-3-4b")
    merged = workdir / result_paths("gemma-3-4b")["merged_instruct"]
    snakemake(workdir, str(merged.relative_to(workdir)), "--cores", "2", "--configfile", str(config_file), timeout=600)
    assert sorted(load_file(merged / "model.safetensors")) == sorted(load_file(instruct / "model.safetensors"))
    assert {"processor_config.json", "preprocessor_config.json"} <= {path.name for path in merged.iterdir()}
    assert (merged / "chat_template.jinja").read_text() == (instruct / "chat_template.jinja").read_text()
