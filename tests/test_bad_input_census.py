"""The census of bad inputs: every test marked `bad_input` (one bad input per test case),
counted by what it is and where the workflow refuses it, and checked to check a message.

`pytest -s tests/test_bad_input_census.py` prints the table."""

import ast
import collections
import json
import os
import subprocess
import sys
import textwrap

import pytest
from bad_input_census_plugin import CENSUS_FILE
from conftest import ROOT

# Where a bad input is refused, earliest first (the marker's `caught`; pyproject.toml says each).
WHERE = ("plan", "check", "job")
# What a bad input is (the marker's first argument).
WHAT = ("config", "config file", "family", "model", "dataset", "benchmark", "LLaMA-Factory", "checkpoint")
MINIMUM_CASES = 30


def checks_a_message(source: str) -> bool:
    """Whether a test's code checks an error's words: `pytest.raises(..., match=...)`, or an
    `assert TEXT in ...` where TEXT is a string, an f-string or a name (a parameter holding one)."""
    for node in ast.walk(ast.parse(textwrap.dedent(source))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "raises":
            if any(keyword.arg == "match" for keyword in node.keywords):
                return True
        if isinstance(node, ast.Assert):
            for compare in ast.walk(node.test):
                if isinstance(compare, ast.Compare) and isinstance(compare.ops[0], ast.In):
                    text = compare.left
                    if isinstance(text, ast.JoinedStr | ast.Name) or (
                        isinstance(text, ast.Constant) and isinstance(text.value, str)
                    ):
                        return True
    return False


def marked_cases(tmp_path) -> list[dict]:
    census = tmp_path / "census.json"
    marked_files = sorted(
        str(path) for path in (ROOT / "tests").glob("test_*.py") if "mark.bad_input" in path.read_text()
    )
    environment = {**os.environ, CENSUS_FILE: str(census), "PYTHONPATH": str(ROOT / "tests")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "bad_input_census_plugin", *marked_files],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(census.read_text())


def table(cases: list[dict]) -> str:
    counts = collections.Counter((case["what"], case["caught"]) for case in cases)
    lines = [f"{'bad input':<16}" + "".join(f"{where:>7}" for where in WHERE) + f"{'total':>7}"]
    for what in WHAT:
        row = [counts[what, where] for where in WHERE]
        lines.append(f"{what:<16}" + "".join(f"{count:>7}" for count in row) + f"{sum(row):>7}")
    totals = [sum(counts[what, where] for what in WHAT) for where in WHERE]
    lines.append(f"{'total':<16}" + "".join(f"{count:>7}" for count in totals) + f"{len(cases):>7}")
    return "\n".join(lines)


@pytest.mark.slow
def test_at_least_thirty_bad_inputs_each_checking_its_message(tmp_path):
    cases = marked_cases(tmp_path)
    print(f"\nbad inputs tried: {len(cases)}\n{table(cases)}")
    assert len(cases) >= MINIMUM_CASES
    wrongly_marked = [case["test"] for case in cases if case["what"] not in WHAT or case["caught"] not in WHERE]
    assert not wrongly_marked, f"mark each with bad_input(<one of {WHAT}>, caught=<one of {WHERE}>)"
    unchecked = sorted({case["test"].split("[")[0] for case in cases if not checks_a_message(case["source"])})
    assert not unchecked, f"these bad-input tests check no message: {unchecked}"


def test_the_message_check_tells_a_check_from_none():
    assert checks_a_message("def t():\n    with pytest.raises(E, match='x'):\n        f()\n")
    assert checks_a_message("def t(named):\n    assert named in str(error)\n")
    assert checks_a_message("def t():\n    assert f'{x}:3' in output and y\n")
    assert not checks_a_message("def t():\n    with pytest.raises(E):\n        f()\n")
    assert not checks_a_message("def t():\n    assert result.returncode != 0\n")
