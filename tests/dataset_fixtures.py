"""Training data in the layouts the workflow reads: a stand-in for BAAI/Infinity-Instruct on the
fake hub, and small sharegpt/alpaca files.

The fake Infinity-Instruct repository is laid out like the real one as far as it could be
checked: the README's YAML front matter maps each config to its folder (`Gen` to `Gen/*`,
`7M` to `7M/*`, ...), the data are parquet, and a row has `id`, `conversations` (turns of
`from`/`value`, human then gpt), `label` (ability and category lists, English and Chinese),
`langdetect`, `source` and (since 2025-01) `reward`. The shard names follow the Hub's
`train-0000k-of-0000n.parquet` convention; Gen's own file names could not be checked.
"""

from __future__ import annotations

import json
import random
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN_PYTHON = ROOT / ".venvs" / "train" / "bin" / "python"

INFINITY_INSTRUCT = "BAAI/Infinity-Instruct"
INFINITY_README = """---
configs:
- config_name: 3M
  data_files:
  - split: train
    path: 3M/*
- config_name: 7M
  data_files:
  - split: train
    path: 7M/*
- config_name: '0625'
  data_files:
  - split: train
    path: 0625/*
- config_name: Gen
  data_files:
  - split: train
    path: Gen/*
- config_name: 7M_domains
  data_files:
  - split: train
    path: 7M_domains/*/*
license: cc-by-sa-4.0
extra_gated_prompt: You agree to not use the dataset to conduct experiments that cause harm to human subjects.
---
# Infinity Instruct (a few hundred rows written by the tests)
"""

WORDS = "alpha beta gamma delta kernel vector prime river garden cloud number letter".split()


def infinity_rows(count: int, *, start: int = 0, seed: int = 0) -> list[dict]:
    """Rows shaped like Infinity-Instruct's: one to three human/gpt exchanges each."""
    rng = random.Random(seed)
    rows = []
    for number in range(start, start + count):
        turns = []
        for _ in range(rng.randint(1, 3)):
            question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
            turns.append({"from": "human", "value": f"Explain {question} (row {number})"})
            turns.append({"from": "gpt", "value": " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))})
        rows.append(
            {
                "id": number,
                "conversations": turns,
                "label": {
                    "ability_en": [rng.choice(WORDS)],
                    "ability_zh": ["写作"],
                    "cate_ability_en": ["writing"],
                    "cate_ability_zh": ["写作"],
                },
                "langdetect": "en",
                "source": "fake",
                "reward": rng.uniform(-5, 5),
            }
        )
    return rows


def parquet_files(tables: dict[str, list[dict]], *, row_group_size: int = 32) -> dict[str, bytes]:
    """Parquet bytes of each table, written by pyarrow in the train environment (core has none)."""
    script = (
        "import json, sys, pyarrow as pa, pyarrow.parquet as pq\n"
        "tables, folder, size = json.load(sys.stdin)\n"
        "for index, rows in enumerate(tables):\n"
        "    pq.write_table(pa.Table.from_pylist(rows), f'{folder}/{index}.parquet', row_group_size=size)\n"
    )
    with tempfile.TemporaryDirectory() as folder:
        names = list(tables)
        subprocess.run(
            [str(TRAIN_PYTHON), "-c", script],
            input=json.dumps([[tables[name] for name in names], folder, row_group_size]),
            text=True,
            check=True,
        )
        return {name: (Path(folder) / f"{index}.parquet").read_bytes() for index, name in enumerate(names)}


def infinity_instruct_files(rows_per_shard: tuple[int, ...] = (120, 100, 80)) -> dict[str, bytes]:
    """The fake repository: README, the Gen shards, and a 7M shard that a Gen download must leave out."""
    shards, start = {}, 0
    for index, count in enumerate(rows_per_shard):
        shards[f"Gen/train-{index:05d}-of-{len(rows_per_shard):05d}.parquet"] = infinity_rows(count, start=start)
        start += count
    shards["7M/train-00000-of-00001.parquet"] = infinity_rows(10, start=10_000, seed=7)
    files = parquet_files(shards)
    files["README.md"] = INFINITY_README.encode()
    files[".gitattributes"] = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
    return files


def sharegpt_openai_rows(count: int) -> list[dict]:
    """Sharegpt rows with role/content turns and a system column (the other style LLaMA-Factory reads)."""
    return [
        {
            "conversations": [
                {"role": "user", "content": f"copy: {' '.join(WORDS[i % 5 : i % 5 + 3])}"},
                {"role": "assistant", "content": " ".join(WORDS[i % 5 : i % 5 + 3])},
            ],
            "system": "Answer briefly.",
        }
        for i in range(count)
    ]


def alpaca_rows(count: int) -> list[dict]:
    return [
        {"instruction": "Reverse the words.", "input": " ".join(WORDS[i % 6 : i % 6 + 3]), "output": "done"}
        for i in range(count)
    ]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
