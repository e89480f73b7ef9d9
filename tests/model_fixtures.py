"""Models of a real size that cost no disk: safetensors files whose data region is a hole."""

import json
import struct
from pathlib import Path

# A Llama-3-8B-like layer geometry, scaled in depth to reach a given parameter count.
HIDDEN, INTERMEDIATE, VOCAB = 3072, 8192, 151936


def write_sparse_model(folder: Path, parameters: int, *, shards: int = 2) -> Path:
    """A bf16 model folder holding exactly `parameters` parameters, in `shards` sparse files.

    The headers are real (the engine and the sizing read them); the tensor bytes are a file
    hole, so an 8 GB model takes a few kilobytes of disk.
    """
    folder.mkdir(parents=True, exist_ok=True)
    layer_shapes = [(HIDDEN, HIDDEN)] * 4 + [(INTERMEDIATE, HIDDEN), (INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)]
    tensors = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    remaining = parameters - VOCAB * HIDDEN
    layer_size = sum(rows * cols for rows, cols in layer_shapes)
    layer = 0
    while remaining >= layer_size:
        names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        for name, shape in zip(names, layer_shapes, strict=True):
            module = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            tensors[f"model.layers.{layer}.{module}.{name}.weight"] = shape
        remaining -= layer_size
        layer += 1
    if remaining:
        tensors["model.norm.weight"] = (remaining,)
    names = list(tensors)
    per_shard = -(-len(names) // shards)
    weight_map = {}
    for index in range(shards):
        shard_names = names[index * per_shard : (index + 1) * per_shard]
        file_name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        _write_sparse_safetensors(folder / file_name, {name: tensors[name] for name in shard_names})
        weight_map.update(dict.fromkeys(shard_names, file_name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "torch_dtype": "bfloat16",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": layer,
        "vocab_size": VOCAB,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _write_sparse_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    header, offset = {}, 0
    for name, shape in shapes.items():
        nbytes = 2
        for size in shape:
            nbytes *= size
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)) + encoded)
        handle.truncate(8 + len(encoded) + offset)


def local_pair_experiment(root: Path) -> tuple[dict, Path]:
    """The demo config with a pair of sparse local models and a one-question local dataset under
    `root`: a plan (or a config-writing job) without building the demo. Returns the config and
    where to write it."""
    import json

    import yaml

    models = root / "models"
    for name in ("base", "instruct"):
        write_sparse_model(models / name, 1_000_000_000)
    data = root / "data_in"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"x": {"file_name": "x.json"}}))
    (data / "eval.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "config.yaml").read_text())
    config["models"] = {
        "b": {"source": "local", "path": str(models / "base")},
        "i": {"source": "local", "path": str(models / "instruct")},
    }
    config["pairs"] = {"p": {"base": "b", "instruct": "i", "template": "qwen"}}
    config["datasets"] = {"x": {"source": "local", "path": str(data)}}
    config["training"].update(dataset="x", tunings=["lora"], stages=["sft"])
    config["training"].pop("preference_dataset", None)
    config["evaluation"]["benchmarks"] = {"held_out": {"kind": "custom", "dataset": "x"}}
    config["graft"]["alphas"] = [1.0]
    return config, root / "experiment.yaml"
