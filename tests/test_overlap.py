"""The overlap of a pair's updates, against torch in float64 over whole tensors.

I = INSTRUCT - BASE, B = tuned BASE - BASE (a full model, or a LoRA adapter's s * B @ A), F = tuned
INSTRUCT - INSTRUCT. Every sum the engine accumulates (absolute sums, squared norms, dot products)
per tensor, per layer (pooled) and overall, at a small chunk (CHUNK: every tensor in several
blocks, LoRA rows split, partial sums added up) and at the default one; then the edge cases: an
update that leaves tensors alone, no tuned model at all, INSTRUCT equal to BASE in a tensor.
"""

import csv
import math

import pytest
import torch
from chunk_fixtures import (
    CHUNK,
    LLAMA_SHAPES,
    PROJECTIONS,
    moved,
    random_tensors,
    with_int_tensor,
    write_adapter,
    write_model,
)
from delta_fixtures import _private_hash_cache  # noqa: F401  (autouse)

from shadowft.cli import main
from shadowft.engine.layout import DeltaError
from shadowft.engine.numerics import CHUNK_ELEMENTS
from shadowft.engine.options import DeltaOptions
from shadowft.engine.overlap import COLUMNS, MEASURES, SUMS, Updates, measure_overlap
from shadowft.engine.sigma import layer_index

RANK, LORA_ALPHA = 4, 8
SCALE = LORA_ALPHA / RANK
#: The LoRA targets: standard layout, rows of 24 and of 150 (split at CHUNK), and the transposed embedding.
TARGETS = ("model.embed_tokens", "model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj")
INSTRUCT_TARGETS = ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj")
UNCHANGED = "model.layers.1.self_attn.o_proj.weight"  # INSTRUCT's equals BASE's


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """BASE, INSTRUCT (one tensor unchanged), both tuned in full, and a LoRA adapter trained on each."""
    root = tmp_path_factory.mktemp("overlap")
    base = random_tensors(LLAMA_SHAPES, seed=40)
    instruct = moved(base, seed=41, scale=0.05)
    instruct[UNCHANGED] = base[UNCHANGED].clone()
    # The tuned BASE's update leans on INSTRUCT's: cosines well inside (-1, 1), not near 0.
    leaning = {name: torch.lerp(t.double(), instruct[name].double(), 0.3).to(t.dtype) for name, t in base.items()}
    tuned = moved(leaning, seed=42, scale=0.02)
    instruct_tuned = moved(instruct, seed=43, scale=0.02)
    models = {"base": base, "instruct": instruct, "tuned": tuned, "instruct_tuned": instruct_tuned}
    # An int tensor in every model: no update, not compared.
    folders = {name: write_model(root / name, with_int_tensor(tensors)) for name, tensors in models.items()}
    factors = {
        "adapter": lora_factors(TARGETS, seed=44),
        "instruct_adapter": lora_factors(INSTRUCT_TARGETS, seed=45),
    }
    for name, found in factors.items():
        folders[name] = write_adapter(root / name, found, r=RANK, lora_alpha=LORA_ALPHA, embeddings=(TARGETS[0],))
    return models, factors, folders


def lora_factors(modules, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    factors = {}
    for module in modules:
        rows, cols = LLAMA_SHAPES[f"{module}.weight"]
        if module.endswith("embed_tokens"):  # PEFT's embedding layout: A [r, rows], B [cols, r]
            rows, cols = cols, rows
        a = torch.randn(RANK, cols, generator=generator, dtype=torch.float64) * 0.3
        b = torch.randn(rows, RANK, generator=generator, dtype=torch.float64) * 0.3
        factors[module] = (a.float(), b.float())
    return factors


def lora_update(factors: dict, name: str, shape) -> torch.Tensor:
    """s * B @ A of the module `name` belongs to, in float64 (transposed for the embedding); zero if untargeted."""
    module = name.removesuffix(".weight")
    if module not in factors:
        return torch.zeros(shape, dtype=torch.float64)
    a, b = factors[module]
    product = SCALE * (b.double() @ a.double())
    return product.T if module.endswith("embed_tokens") else product


def expected_sums(models: dict, factors: dict | None, names) -> dict[str, dict[str, float]]:
    """Per tensor every SUM in float64: B and F from the tuned models, or from the adapters' factors."""
    expected = {}
    for name in names:
        w, wi = models["base"][name].double(), models["instruct"][name].double()
        i = wi - w
        if factors is None:
            b = models["tuned"][name].double() - w
            f = models["instruct_tuned"][name].double() - wi
        else:
            b = lora_update(factors["adapter"], name, w.shape)
            f = lora_update(factors["instruct_adapter"], name, w.shape)
        values = {
            "sum_abs_diff": i.abs().sum(),
            "sum_abs_base": w.abs().sum(),
            "sum_abs_instruct": wi.abs().sum(),
            "sq_base": (w * w).sum(),
            "sq_i": (i * i).sum(),
            "sq_b": (b * b).sum(),
            "sq_f": (f * f).sum(),
            "dot_ib": (i * b).sum(),
            "dot_if": (i * f).sum(),
            "dot_bf": (b * f).sum(),
        }
        expected[name] = {key: float(value) for key, value in values.items()}
    return expected


def measures(sums: dict[str, float], sigma: float) -> dict[str, float]:
    """The measures from the sums, written out again from their definitions."""
    norm = {key: math.sqrt(sums[f"sq_{key}"]) for key in ("base", "i", "b", "f")}

    def ratio(a, b):
        return a / b if b else math.nan

    return {
        "sigma": sigma,
        "rel_i": ratio(norm["i"], norm["base"]),
        "cos_ib": ratio(sums["dot_ib"], norm["i"] * norm["b"]),
        "ratio_bi": ratio(norm["b"], norm["i"]),
        "cos_if": ratio(sums["dot_if"], norm["i"] * norm["f"]),
        "cos_bf": ratio(sums["dot_bf"], norm["b"] * norm["f"]),
        "ratio_fb": ratio(norm["f"], norm["b"]),
    }


def read_rows(path) -> dict[tuple[str, str], dict]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(COLUMNS)
    return {(row["level"], row["name"]): row for row in rows}


def number(cell: str) -> float:
    return math.nan if cell == "" else float(cell)


def assert_row(row: dict, sums: dict[str, float], sigma: float, what: str) -> None:
    for key, value in {**sums, **measures(sums, sigma)}.items():
        got = number(row[key])
        if math.isnan(value):
            assert row[key] == "", f"{what}: {key} is {row[key]!r}, undefined expected"
        else:
            assert got == pytest.approx(value, rel=1e-9, abs=1e-12), f"{what}: {key}"


def check_against_torch(csv_path, models, factors, names) -> None:
    rows = read_rows(csv_path)
    sums = expected_sums(models, factors, names)
    sigma = {n: s["sum_abs_diff"] / (s["sum_abs_base"] + s["sum_abs_instruct"]) for n, s in sums.items()}
    assert sorted(name for level, name in rows if level == "tensor") == sorted(names)
    for name in names:
        row = rows["tensor", name]
        assert int(row["numel"]) == models["base"][name].numel()
        assert_row(row, sums[name], sigma[name], name)
    in_layers = [name for name in names if layer_index(name) is not None]
    for layer in sorted({layer_index(name) for name in in_layers}):
        members = [name for name in in_layers if layer_index(name) == layer]
        pooled = {key: sum(sums[name][key] for name in members) for key in SUMS}
        mean_sigma = sum(sigma[name] for name in members) / len(members)
        assert_row(rows["layer", f"layers.{layer}"], pooled, mean_sigma, f"layer {layer}")
    pooled = {key: sum(sums[name][key] for name in in_layers) for key in SUMS}
    overall = rows["overall", "overall"]
    assert_row(overall, pooled, sum(sigma[name] for name in in_layers) / len(in_layers), "overall")
    assert int(overall["numel"]) == sum(models["base"][name].numel() for name in in_layers)


FLOAT_NAMES = list(LLAMA_SHAPES)


@pytest.mark.parametrize("chunk", [CHUNK, CHUNK_ELEMENTS])
def test_full_updates_against_torch(pair, tmp_path, chunk):
    models, _, folders = pair
    updates = Updates(tuned=folders["tuned"], instruct_tuned=folders["instruct_tuned"])
    options = DeltaOptions(chunk_elements=chunk, progress=False)
    summary = measure_overlap(folders["base"], folders["instruct"], tmp_path / "overlap.csv", updates, options)
    check_against_torch(tmp_path / "overlap.csv", models, None, FLOAT_NAMES)
    assert summary["tensors"] == len(FLOAT_NAMES) and set(summary["layers"]) == {0, 1}
    assert 0.2 < summary["overall"]["cos_ib"] < 0.9 and summary["not_compared"] == {}


@pytest.mark.parametrize("chunk", [CHUNK, CHUNK_ELEMENTS])
def test_lora_updates_against_torch_untargeted_tensors_are_zero(pair, tmp_path, chunk):
    models, factors, folders = pair
    updates = Updates(adapter=folders["adapter"], instruct_adapter=folders["instruct_adapter"])
    options = DeltaOptions(chunk_elements=chunk, progress=False)
    measure_overlap(folders["base"], folders["instruct"], tmp_path / "overlap.csv", updates, options)
    check_against_torch(tmp_path / "overlap.csv", models, factors, FLOAT_NAMES)
    rows = read_rows(tmp_path / "overlap.csv")
    untargeted = rows["tensor", "model.norm.weight"]
    assert float(untargeted["sq_b"]) == 0.0 and untargeted["cos_ib"] == "" and float(untargeted["ratio_bi"]) == 0.0


def test_a_full_and_a_lora_update_side_by_side(pair, tmp_path):
    models, factors, folders = pair
    updates = Updates(tuned=folders["tuned"], instruct_adapter=folders["instruct_adapter"])
    measure_overlap(
        folders["base"], folders["instruct"], tmp_path / "o.csv", updates, DeltaOptions(chunk_elements=CHUNK)
    )
    rows = read_rows(tmp_path / "o.csv")
    name = "model.layers.0.self_attn.q_proj.weight"
    b = models["tuned"][name].double() - models["base"][name].double()
    f = lora_update(factors["instruct_adapter"], name, b.shape)
    assert float(rows["tensor", name]["dot_bf"]) == pytest.approx(float((b * f).sum()), rel=1e-9)


def test_the_selection_and_the_edge_cases(pair, tmp_path):
    """The graft's selection alone; without a tuned model only the measures that need none; a tensor
    INSTRUCT left alone has no cosine, an int tensor is no tensor of the overlap."""
    models, _, folders = pair
    options = DeltaOptions(preset="official", chunk_elements=CHUNK, progress=False)
    summary = measure_overlap(folders["base"], folders["instruct"], tmp_path / "o.csv", Updates(), options)
    rows = read_rows(tmp_path / "o.csv")
    assert sorted(name for level, name in rows if level == "tensor") == sorted(PROJECTIONS)
    assert summary["tensors"] == len(PROJECTIONS)
    for row in rows.values():
        assert all(row[key] == "" for key in ("sq_b", "sq_f", "dot_ib", "dot_if", "dot_bf")), row["name"]
        assert all(row[key] == "" for key in ("cos_ib", "ratio_bi", "cos_if", "cos_bf", "ratio_fb")), row["name"]
        assert all(row[key] != "" for key in ("sigma", "rel_i")), row["name"]
    unchanged = rows["tensor", UNCHANGED]
    assert float(unchanged["sq_i"]) == 0.0 and float(unchanged["rel_i"]) == 0.0 and float(unchanged["sigma"]) == 0.0
    measure_overlap(folders["base"], folders["instruct"], tmp_path / "b.csv", Updates(tuned=folders["tuned"]), options)
    with_b = read_rows(tmp_path / "b.csv")
    assert with_b["tensor", UNCHANGED]["cos_ib"] == "" and with_b["tensor", UNCHANGED]["ratio_bi"] == ""
    assert with_b["overall", "overall"]["cos_ib"] != ""  # the other tensors define it
    assert set(summary["overall"]) == set(MEASURES) and math.isnan(summary["overall"]["cos_ib"])


def test_inputs_are_checked(pair, tmp_path):
    models, _, folders = pair
    with pytest.raises(DeltaError, match="not both"):
        Updates(tuned=folders["tuned"], adapter=folders["adapter"])
    with pytest.raises(DeltaError, match="give the tuned BASE too"):
        Updates(instruct_tuned=folders["instruct_tuned"])
    wrong = dict(models["instruct"])
    wrong[UNCHANGED] = wrong[UNCHANGED][:-1]
    with pytest.raises(DeltaError, match=f"^I, INSTRUCT's update of BASE .*: shape mismatch for '{UNCHANGED}'"):
        measure_overlap(folders["base"], write_model(tmp_path / "wrong", with_int_tensor(wrong)), tmp_path / "o.csv")
    assert not (tmp_path / "o.csv").exists()


def test_the_command_line(pair, tmp_path, capsys):
    _, _, folders = pair
    out = tmp_path / "overlap.csv"
    command = ["overlap", str(folders["base"]), str(folders["instruct"]), "--adapter", str(folders["adapter"])]
    assert (
        main(
            [
                *command,
                "--instruct-tuned",
                str(folders["instruct_tuned"]),
                "--preset",
                "official",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    said = capsys.readouterr().err
    assert "cos(I, B) = " in said and "cos(B, F) = " in said and str(out) in said
    assert sorted(name for level, name in read_rows(out) if level == "tensor") == sorted(PROJECTIONS)
    with pytest.raises(SystemExit):
        main([*command, "--tuned", str(folders["tuned"]), "--out", str(out)])
