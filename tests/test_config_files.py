"""Config files that do not parse, are empty, or hold no mapping: the message names the file and line.

Where the workflow reads the file itself (the demo's `configfile:`, a family file) the dry run
says so. A `--configfile` is read by Snakemake before the Snakefile runs, which stops with a
message naming neither file nor line; `shadowft check-config FILE` names both
(docs/pitfalls.md)."""

import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, snakemake

from shadowft.workflow.yamlfile import YamlFileError, load_mapping

# Broken YAML, each with the line:column (or line) the message must give.
BROKEN = {
    "syntax error": ("seed: 0\ntraining:\n  dataset: [demo_task\n", ":3:12: ", "not valid YAML"),
    "tab indentation": ("seed: 0\ntraining:\n\tdataset: demo_task\n", ":3:1: ", "indent with spaces"),
    "empty": ("# nothing yet\n\n", ": ", "is empty"),
    "top level a list": ("- seed: 0\n- pairs: {}\n", ":1: ", "is a list"),
    "top level a scalar": ("demo\n", ":1: ", "the single value 'demo'"),
}
CASES = [pytest.param(*case, id=name) for name, case in BROKEN.items()]
# Through a whole dry run, one case each: the reader's own test below tries every case.
DRY_RUN_CASE = [pytest.param(*BROKEN["syntax error"], id="syntax error")]
# What the workflow needs of a checkout to plan: the Snakefile and everything it reads.
WORKFLOW_PARTS = ("Snakefile", "rules", "shadowft", "scripts", "config", "envs", "report", "profiles")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A copy of the workflow whose config files a test may break (the environments linked)."""
    root = tmp_path_factory.mktemp("checkout")
    for part in WORKFLOW_PARTS:
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, root / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, root / part)
    (root / ".venvs").symlink_to(ROOT / ".venvs")
    return root


@pytest.mark.bad_input("config file", caught="plan")
@pytest.mark.parametrize("text, where, says", CASES)
def test_the_reader_names_the_file_and_line(tmp_path, text, where, says):
    file = tmp_path / "experiment.yaml"
    file.write_text(text)
    with pytest.raises(YamlFileError) as error:
        load_mapping(file, "config file")
    assert f"{file}{where}" in str(error.value) and says in str(error.value)


@pytest.mark.slow
@pytest.mark.bad_input("config file", caught="plan")
@pytest.mark.parametrize("text, where, says", DRY_RUN_CASE)
def test_a_broken_demo_config_names_the_file_and_line(checkout, tmp_path, text, where, says):
    demo_config = checkout / "config" / "config.yaml"
    original = demo_config.read_text()
    demo_config.write_text(text)
    try:
        result = snakemake(tmp_path, "-n", check=False, checkout=checkout, name_demo_config=False)
    finally:
        demo_config.write_text(original)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"{demo_config}{where}" in output and says in output, output[-3000:]
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


@pytest.mark.slow
@pytest.mark.bad_input("family", caught="plan")
@pytest.mark.parametrize("text, where, says", DRY_RUN_CASE)
def test_a_broken_family_file_names_the_file_and_line(checkout, tmp_path, text, where, says):
    family = checkout / "config" / "families" / "broken.yaml"
    family.write_text(text)
    config = yaml.safe_load((checkout / "config" / "config.yaml").read_text())
    config.update(families=["broken"])
    configfile = tmp_path / "experiment.yaml"
    configfile.write_text(yaml.safe_dump(config))
    try:
        result = snakemake(tmp_path, "-n", "--configfile", str(configfile), check=False, checkout=checkout)
    finally:
        family.unlink()
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"{family}{where}" in output and "family file" in output and says in output, output[-3000:]
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


@pytest.mark.slow
@pytest.mark.bad_input("config file", caught="plan")
@pytest.mark.parametrize("text, where, says", DRY_RUN_CASE)
def test_a_broken_configfile_stops_snakemake_and_the_check_names_the_line(tmp_path, text, where, says):
    """Snakemake refuses it before any job, in its own words (no file, no line: it reads the
    file before the Snakefile runs); `shadowft check-config` gives both."""
    configfile = tmp_path / "experiment.yaml"
    configfile.write_text(text)
    workdir = tmp_path / "work"
    result = snakemake(workdir, "-n", "--configfile", str(configfile), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "WorkflowError:\nConfig file " in output and str(configfile) not in output, output[-3000:]
    assert not (workdir / "data").exists() and not (workdir / "results").exists()

    check = subprocess.run(
        [sys.executable, "-m", "shadowft", "check-config", str(configfile)], capture_output=True, text=True, cwd=ROOT
    )
    assert check.returncode == 1
    assert f"{configfile}{where}" in check.stderr and says in check.stderr, check.stderr


@pytest.mark.bad_input("config file", caught="plan")
@pytest.mark.parametrize("text, where, says", CASES)
def test_the_check_command_names_the_line_of_every_broken_file(tmp_path, text, where, says):
    configfile = tmp_path / "experiment.yaml"
    configfile.write_text(text)
    check = subprocess.run(
        [sys.executable, "-m", "shadowft", "check-config", str(configfile)], capture_output=True, text=True, cwd=ROOT
    )
    assert check.returncode == 1
    assert f"{configfile}{where}" in check.stderr and says in check.stderr, check.stderr


@pytest.mark.slow
@pytest.mark.bad_input("config file", caught="plan")
def test_a_key_given_twice_in_a_configfile_is_named_with_both_lines(tmp_path):
    """Snakemake (like PyYAML) keeps the second silently: two pairs of one name plan one."""
    text = (ROOT / "config" / "config.yaml").read_text()
    first = text.splitlines().index("pairs:") + 1
    text += "\npairs:\n  other: {base: demo-base, instruct: demo-instruct, template: qwen}\n"
    configfile = tmp_path / "experiment.yaml"
    configfile.write_text(text)
    result = snakemake(tmp_path / "work", "-n", "--configfile", str(configfile), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    second = len(text.splitlines()) - 1
    assert f"{configfile}:{second}:1: " in output, output[-3000:]
    assert f"the key 'pairs' appears twice (first on line {first})" in output
    assert not (tmp_path / "work" / "data").exists()


def test_merge_keys_are_not_duplicates(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("a: &shared {k: 1, j: 1}\nb:\n  <<: *shared\n  k: 2\n")
    assert load_mapping(file, "config file") == {"a": {"k": 1, "j": 1}, "b": {"k": 2, "j": 1}}


def test_the_check_accepts_the_demo_config():
    check = subprocess.run(
        [sys.executable, "-m", "shadowft", "check-config", str(ROOT / "config" / "config.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert check.returncode == 0, check.stderr
    assert "valid (1 pairs, 2 runs)" in check.stderr


@pytest.mark.bad_input("config", caught="plan")
def test_the_check_names_the_key_of_a_config_that_parses(tmp_path):
    configfile = tmp_path / "experiment.yaml"
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["graft"]["alphas"] = [-1.0]
    configfile.write_text(yaml.safe_dump(config))
    check = subprocess.run(
        [sys.executable, "-m", "shadowft", "check-config", str(configfile)], capture_output=True, text=True, cwd=ROOT
    )
    assert check.returncode == 1
    assert f"{configfile}: invalid configuration" in check.stderr and "graft.alphas[0]" in check.stderr


def test_a_syntax_error_shows_the_line_and_points_at_where_an_unclosed_bracket_began(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("seed: 0\nalphas: [1,\n  2\n")
    with pytest.raises(YamlFileError, match=r"c\.yaml:2:9: the config file is not valid YAML") as error:
        load_mapping(file, "config file")
    assert "  2 | alphas: [1," in str(error.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(YamlFileError, match=r"absent\.yaml: cannot read the config file"):
        load_mapping(tmp_path / "absent.yaml", "config file")
