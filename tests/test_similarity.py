"""sigma between two models that differ in more than their values: unshared, non-float and wider tensors.

Checked against torch in float64 over whole tensors: the sums per tensor, sigma per tensor,
per layer (the mean of its tensors) and overall (the mean over the layers' tensors), at a
small chunk (many blocks per tensor, partial sums added up) and at the default one.
"""

import csv
import re

import pytest
import torch
from chunk_fixtures import CHUNK, HIDDEN, INT_TENSOR, LLAMA_SHAPES, moved, random_tensors, with_int_tensor, write_model
from delta_fixtures import _private_hash_cache  # noqa: F401  (autouse)

from shadowft.engine.numerics import CHUNK_ELEMENTS
from shadowft.engine.sigma import similarity

BIG = "model.layers.1.mlp.up_proj.weight"  # 600 x 512 = 307200 elements: two default chunks
ONLY_IN_A, ONLY_IN_B = "model.layers.0.self_attn.k_proj.weight", "model.layers.1.self_attn.v_proj.weight"
FLOAT_IN_A_INT_IN_B = "model.layers.0.post_attention_layernorm.weight"
LAYER = re.compile(r"^model\.layers\.(\d+)\.")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Models A and B: B has 6 more vocabulary rows, an int where A has a float, and tensors A lacks."""
    root = tmp_path_factory.mktemp("similarity")
    a = with_int_tensor(
        random_tensors(
            {**LLAMA_SHAPES, BIG: (600, 512), FLOAT_IN_A_INT_IN_B: (HIDDEN,), ONLY_IN_A: (HIDDEN, HIDDEN)}, seed=30
        )
    )
    b = moved({n: t for n, t in a.items() if n != ONLY_IN_A}, seed=31, scale=0.05)
    generator = torch.Generator().manual_seed(32)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        b[name] = torch.cat([b[name], torch.randn(6, HIDDEN, generator=generator).bfloat16()])
    b[FLOAT_IN_A_INT_IN_B] = torch.arange(HIDDEN)
    b[ONLY_IN_B] = torch.randn(HIDDEN, HIDDEN, generator=generator).bfloat16()
    return a, b, write_model(root / "a", a), write_model(root / "b", b)


def expected_sums(a: dict, b: dict) -> dict:
    """{name: (numel, sum|a-b|, sum|a|, sum|b|)} over the rows both have, for float tensors in both."""
    sums = {}
    for name in a.keys() & b.keys():
        if not (a[name].is_floating_point() and b[name].is_floating_point()):
            continue
        rows = min(a[name].shape[0], b[name].shape[0])
        x, y = a[name][:rows].double(), b[name][:rows].double()
        sums[name] = (x.numel(), float((x - y).abs().sum()), float(x.abs().sum()), float(y.abs().sum()))
    return sums


@pytest.mark.parametrize("chunk", [CHUNK, CHUNK_ELEMENTS])
def test_sigma_per_tensor_layer_and_overall_against_torch(pair, tmp_path, chunk):
    a, b, a_dir, b_dir = pair
    summary = similarity(a_dir, b_dir, tmp_path / "sigma.csv", chunk_elements=chunk, progress=False)
    sums = expected_sums(a, b)
    sigma = {name: diff / (abs_a + abs_b) for name, (_, diff, abs_a, abs_b) in sums.items()}
    with open(tmp_path / "sigma.csv") as f:
        rows = list(csv.DictReader(f))
    tensors = {r["name"]: r for r in rows if r["level"] == "tensor"}
    assert sorted(tensors) == sorted(sums)
    for name, (numel, diff, abs_a, abs_b) in sums.items():
        row = tensors[name]
        assert int(row["numel"]) == numel, name
        got = [float(row[key]) for key in ("sum_abs_diff", "sum_abs_a", "sum_abs_b", "sigma")]
        assert got == pytest.approx([diff, abs_a, abs_b, sigma[name]], rel=1e-5), name

    by_layer: dict[int, list[float]] = {}
    for name, value in sigma.items():
        if match := LAYER.match(name):
            by_layer.setdefault(int(match.group(1)), []).append(value)
    layers = {layer: sum(values) / len(values) for layer, values in by_layer.items()}
    assert summary["layers"] == pytest.approx(layers, rel=1e-5)
    assert {int(r["layer"]): float(r["sigma"]) for r in rows if r["level"] == "layer"} == pytest.approx(
        layers, rel=1e-5
    )
    in_layers = [value for values in by_layer.values() for value in values]
    (overall,) = [r for r in rows if r["level"] == "overall"]
    assert summary["overall_sigma"] == pytest.approx(sum(in_layers) / len(in_layers), rel=1e-5)
    assert float(overall["sigma"]) == summary["overall_sigma"]
    assert int(overall["numel"]) == sum(numel for numel, *_ in sums.values())


def test_skipped_and_unshared_tensors_are_listed_not_compared(pair, tmp_path):
    _, _, a_dir, b_dir = pair
    summary = similarity(a_dir, b_dir, tmp_path / "sigma.csv", chunk_elements=CHUNK, progress=False)
    assert summary["skipped"] == {INT_TENSOR[0]: "not floating point", FLOAT_IN_A_INT_IN_B: "not floating point"}
    assert summary["only_in_a"] == [ONLY_IN_A] and summary["only_in_b"] == [ONLY_IN_B]
    assert summary["tensors"] == len(LLAMA_SHAPES) + 1  # the float tensors both have, BIG included
    with open(tmp_path / "sigma.csv") as f:
        names = {r["name"] for r in csv.DictReader(f)}
    assert not names & {INT_TENSOR[0], FLOAT_IN_A_INT_IN_B, ONLY_IN_A, ONLY_IN_B}


def test_a_model_with_itself_is_zero_everywhere(pair, tmp_path):
    _, _, a_dir, _ = pair
    summary = similarity(a_dir, a_dir, tmp_path / "sigma.csv", chunk_elements=CHUNK, progress=False)
    assert summary["overall_sigma"] == 0.0 and set(summary["layers"].values()) == {0.0}
