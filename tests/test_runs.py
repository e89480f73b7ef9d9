"""Run and variant names (shadowft.workflow.sweep): every dimension in the name, parsed back exactly."""

import pytest

from shadowft.workflow.sweep import Run, Variant, VariantKind, learning_rate_label


@pytest.mark.parametrize(
    ("run", "name"),
    [
        (Run("sft", "lora", 1e-4, 8, 0), "sft-lora-lr1e-4-r8-s0"),
        (Run("sft", "full", 1e-5, None, 0), "sft-full-lr1e-5-s0"),
        (Run("dpo", "lora", 2.5e-5, 128, 12), "dpo-lora-lr2.5e-5-r128-s12"),
        (Run("dpo", "full", 5e-7, None, 3), "dpo-full-lr5e-7-s3"),
        (Run("sft", "lora", 1.0, 8, 0), "sft-lora-lr1e0-r8-s0"),
    ],
)
def test_a_run_is_named_by_every_dimension_and_parsed_back(run, name):
    assert run.name == name
    assert Run.parse(name) == run


def test_learning_rates_are_written_exactly():
    # Shortest exact form: two rates that differ anywhere get different names.
    assert learning_rate_label(1.0e-4) == "1e-4" and learning_rate_label(0.0001) == "1e-4"
    assert learning_rate_label(1.2345678912e-4) == "1.2345678912e-4"
    assert learning_rate_label(1.2345678912e-4) != learning_rate_label(1.2345678913e-4)


@pytest.mark.parametrize(
    "name",
    [
        "lora",
        "sft-lora-lr1e-4-s0",
        "sft-full-lr1e-5-r8-s0",
        "sft-lora-lr1e-04-r8-s0",
        "sft-lora-lr0.0001-r8-s0",
        "ppo-lora-lr1e-4-r8-s0",
    ],
)
def test_names_that_are_not_canonical_runs_are_refused(name):
    with pytest.raises(ValueError, match="run"):
        Run.parse(name)


def test_a_run_checks_its_dimensions():
    with pytest.raises(ValueError, match="rank"):
        Run("sft", "full", 1e-5, 8, 0)
    with pytest.raises(ValueError, match="rank"):
        Run("sft", "lora", 1e-4, None, 0)
    with pytest.raises(ValueError, match="seed"):
        Run("sft", "lora", 1e-4, 8, -1)


@pytest.mark.parametrize(
    ("variant", "name"),
    [
        (Variant(VariantKind.BASE), "base"),
        (Variant(VariantKind.INSTRUCT), "instruct"),
        (Variant(VariantKind.INSTRUCT_FT, Run("sft", "full", 1e-5, None, 0)), "sft-full-lr1e-5-s0/instruct_ft"),
        (Variant(VariantKind.BASE_FT, Run("sft", "lora", 1e-4, 8, 1)), "sft-lora-lr1e-4-r8-s1/base_ft"),
        (Variant(VariantKind.SHADOW, Run("dpo", "lora", 1e-4, 8, 0), 0.5), "dpo-lora-lr1e-4-r8-s0/shadow_a0.5"),
    ],
)
def test_variants_are_named_like_their_folders_and_parsed_back(variant, name):
    assert variant.name == name
    assert Variant.parse(name) == variant


def test_a_variant_states_its_dimensions_and_none_where_they_do_not_apply():
    assert Variant.parse("instruct").dimensions() == dict.fromkeys(
        ("stage", "tuning", "learning_rate", "lora_rank", "seed", "alpha")
    )
    assert Variant.parse("sft-full-lr1e-5-s2/shadow_a1").dimensions() == {
        "stage": "sft",
        "tuning": "full",
        "learning_rate": 1e-5,
        "lora_rank": None,
        "seed": 2,
        "alpha": 1.0,
    }


@pytest.mark.parametrize("name", ["lora/shadow_a1", "sft-full-lr1e-5-s0/shadow_a1.0", "sft-full-lr1e-5-s0/merged"])
def test_unknown_variants_are_refused(name):
    with pytest.raises(ValueError):
        Variant.parse(name)
