"""Benchmark the graft against the naive approach, mergekit and the I/O floor.

Builds a synthetic bf16 Llama-style triple (base, tuned base, instruct) of
about 0.95 B parameters per model (x --scale) in 1 GB shards, then times each
approach as a whole process, several times, on a warm page cache:

  io-floor       cat the three inputs, write one model-sized file
  shadowft       shadowft graft --base --tuned: a first graft of downloaded models (their
                 sha256 from the download manifest), a repeat (sha256 cached), and one
                 with neither (sha256 computed)
  shadowft-delta shadowft extract-delta, then graft --delta (float32 delta)
  naive          AutoModelForCausalLM x3, add in bf16, save_pretrained
  mergekit       task_arithmetic, base_model = base, models = [instruct w=1, tuned w=1]
                 (when --mergekit-python points at a Python with mergekit installed)

The approaches take turns, one run of each per round, so a change in load
reaches all of them alike. Before each run the approach's inputs are read
once, untimed, so that it starts on a warm cache whatever the run before it
evicted: at --scale 2 the three inputs, a stored fp32 delta and the outputs
(about 27 GB) do not all fit in a 24 GB machine's page cache. Each command runs under a small launcher process
that reports its wall time, CPU time (user + system, independent of other
load on the machine) and peak RSS (ru_maxrss, which counts memory-mapped file
pages too). The launcher hop matters: Linux starts a child's ru_maxrss at its
parent's RSS at fork time, so the models are also built in a separate
process. "Downloaded" models are folders made by shadowft.data.hub.link_local_model,
the way the workflow brings a local model in: links to the built files plus a
manifest of their sha256
(computed while building, not timed). Usage:

  python speed/graft.py [--dir /tmp] [--scale 1] [--repeats 3] [--mergekit-python PY]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARD_BYTES = 10**9
ROLES = ("base", "tuned", "instruct")
HIDDEN, INTERMEDIATE, HEADS, VOCAB, LAYERS_PER_SCALE = 2048, 5632, 16, 32000, 16

# Runs one command; prints its wall seconds, CPU seconds and peak RSS (KiB).
LAUNCHER = textwrap.dedent("""
    import os, subprocess, sys, time
    start = time.perf_counter()
    child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    print(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
""")

NAIVE = textwrap.dedent("""
    import sys, torch
    from transformers import AutoModelForCausalLM
    base, tuned, instruct, out = sys.argv[1:5]
    load = lambda path: AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    b, t, i = load(base), load(tuned), load(instruct)
    with torch.no_grad():
        sb, st = b.state_dict(), t.state_dict()
        for name, p in i.state_dict().items():
            p.add_(st[name] - sb[name])
    i.save_pretrained(out)
""")


def llama_tensors(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    tensors = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        prefix = f"model.layers.{i}"
        tensors += [(f"{prefix}.input_layernorm.weight", (HIDDEN,))]
        tensors += [(f"{prefix}.self_attn.{p}_proj.weight", (HIDDEN, HIDDEN)) for p in "qkvo"]
        tensors += [
            (f"{prefix}.post_attention_layernorm.weight", (HIDDEN,)),
            (f"{prefix}.mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
            (f"{prefix}.mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
            (f"{prefix}.mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
        ]
    return tensors + [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]


def build_triple(root: Path, layers: int, seed: int = 0) -> dict[str, Path]:
    """base, tuned and instruct folders: bf16 safetensors in 1 GB shards, written by safetensors itself."""
    import torch
    from safetensors.torch import save_file

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "vocab_size": VOCAB,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    paths = {role: root / role for role in ("base", "tuned", "instruct")}
    for path in paths.values():
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps(config, indent=2))
    rng = np.random.default_rng(seed)
    tensors = llama_tensors(layers)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    for name, shape in tensors:
        if shards[-1] and sum(2 * math.prod(s) for _, s in shards[-1]) + 2 * math.prod(shape) > SHARD_BYTES:
            shards.append([])
        shards[-1].append((name, shape))
    weight_map = {}
    for index, shard in enumerate(shards, 1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        contents = {role: {} for role in paths}
        for name, shape in shard:
            weight_map[name] = file
            values = rng.standard_normal(shape, dtype=np.float32) * 0.02
            if len(shape) == 1:
                values += 1
            base = (values.view(np.uint32) >> 16).astype(np.uint16)
            # fine-tuning and instruction tuning move weights a little: flip low mantissa bits
            tuned = base ^ rng.integers(0, 4, shape, dtype=np.uint16)
            instruct = base ^ rng.integers(0, 8, shape, dtype=np.uint16)
            for role, bits in (("base", base), ("tuned", tuned), ("instruct", instruct)):
                contents[role][name] = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)
        for role, path in paths.items():
            save_file(contents[role], path / file, metadata={"format": "pt"})
        del contents
    total = sum(2 * math.prod(shape) for _, shape in tensors)
    for path in paths.values():
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
    return paths


def measure(command: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (MB) of one command."""
    result = subprocess.run([sys.executable, "-c", LAUNCHER, *command], env=env, capture_output=True, text=True)
    wall, cpu, rss_kib, code = result.stdout.split()
    if int(code) != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({code}):\n{result.stderr[-3000:]}")
    return float(wall), float(cpu), int(rss_kib) / 1024


def files(path: Path) -> str:
    return " ".join(str(p) for p in sorted(path.glob("*.safetensors")))


@dataclass(frozen=True)
class Approach:
    command: list[str]
    env: dict[str, str]
    inputs: tuple[Path, ...]  # the model folders it reads, the only ones cached before each run


def warm(work: Path, folders: tuple[Path, ...]) -> None:
    """Leave the folders' weight files, and no other model file under `work`, in the page cache.

    At --scale 2 the three inputs, a stored delta and an output do not all fit
    in a 24 GB machine's cache: without the eviction, which of them the kernel
    keeps would depend on the runs before.
    """
    wanted = {p.resolve() for f in folders for p in f.glob("*.safetensors")}
    for path in {p.resolve() for p in work.rglob("*.safetensors")} - wanted:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)
    subprocess.run(["cat", *map(str, sorted(wanted))], stdout=subprocess.DEVNULL, check=True)


def approaches(work: Path, shadowft: list[str], python: str) -> dict[str, Approach]:
    """Every approach but mergekit, on the triple under `work` (linked `models`, plain `built`)."""
    built = {role: work / "models" / "built" / role for role in ROLES}
    models = {role: work / "models" / role for role in ROLES}  # linked, with download manifests
    out, cache, delta = work / "out", work / "sha256-cache", work / "delta"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cached, uncached = {**env, "SHADOWFT_CACHE_DIR": str(cache)}, {**env, "SHADOWFT_CACHE_DIR": ""}

    def graft(inputs: dict[str, Path], *extra: str) -> list[str]:
        sources = ["--base", str(inputs["base"]), "--tuned", str(inputs["tuned"])]
        return [*shadowft, "graft", "--instruct", str(inputs["instruct"]), *sources, "--out", str(out), *extra]

    floor = (
        f"mkdir -p {out} && cat {files(models['base'])} {files(models['tuned'])} > /dev/null"
        f" && cat {files(models['instruct'])} > {out}/copy"
    )
    extract = [*shadowft, "extract-delta", "--base", str(models["base"]), "--tuned", str(models["tuned"])]
    from_delta = [*shadowft, "graft", "--instruct", str(models["instruct"]), "--delta", str(delta)]
    naive = [python, "-c", NAIVE, str(built["base"]), str(built["tuned"]), str(built["instruct"]), str(out)]
    triple, pair = tuple(models.values()), (models["base"], models["tuned"])
    return {
        "io-floor": Approach(["bash", "-c", floor], env, triple),
        "shadowft first graft (sha256 from download manifests)": Approach(
            graft(models, "--no-progress"), uncached, triple
        ),
        "shadowft repeat graft (sha256 cached)": Approach(graft(models, "--no-progress"), cached, triple),
        "shadowft, no manifest or cache (sha256 computed)": Approach(graft(built, "--no-progress"), uncached, triple),
        "shadowft --threads 1 (sha256 cached)": Approach(
            graft(models, "--no-progress", "--threads", "1"), cached, triple
        ),
        "shadowft extract-delta (fp32)": Approach([*extract, "--out", str(out), "--no-progress"], cached, pair),
        "shadowft graft --delta": Approach(
            [*from_delta, "--out", str(out), "--no-progress"], cached, (models["instruct"], delta)
        ),
        "naive (transformers x3)": Approach(naive, env, triple),
    }


def mergekit_approach(work: Path, mergekit_python: Path) -> Approach:
    built = {role: work / "models" / "built" / role for role in ROLES}
    config = work / "mergekit.yml"
    config.write_text(
        textwrap.dedent(f"""\
        merge_method: task_arithmetic
        base_model: {built["base"]}
        models:
          - model: {built["instruct"]}
            parameters: {{weight: 1.0}}
          - model: {built["tuned"]}
            parameters: {{weight: 1.0}}
        dtype: bfloat16
        """)
    )
    mergekit = Path(mergekit_python).parent / "mergekit-yaml"
    return Approach([str(mergekit), str(config), str(work / "out")], os.environ.copy(), tuple(built.values()))


def run_all(work: Path, measured: dict[str, Approach], repeats: int, model_bytes: int) -> dict[str, dict]:
    """Wall, CPU and peak RSS of each approach, `repeats` times, each run on a warm page cache.

    The approaches take turns (one run of each per round), so a change in the
    machine's load during the benchmark reaches all of them alike.
    """
    import psutil  # the benchmark runs from the core environment

    out = work / "out"
    repeat = measured["shadowft repeat graft (sha256 cached)"]
    subprocess.run(repeat.command, env=repeat.env, check=True)  # prime the sha256 cache
    extract = measured["shadowft extract-delta (fp32)"]
    command = [*extract.command[: extract.command.index("--out")], "--out", str(work / "delta"), "--no-progress"]
    subprocess.run(command, env=extract.env, check=True)  # the stored delta "graft --delta" reads
    if psutil.virtual_memory().available < 4 * model_bytes:
        print("skipping naive (transformers x3): not enough free memory", file=sys.stderr)
        measured = {name: approach for name, approach in measured.items() if not name.startswith("naive")}
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in measured}
    for round_number in range(repeats):
        for name, approach in measured.items():
            shutil.rmtree(out, ignore_errors=True)
            os.sync()
            warm(work, approach.inputs)
            runs[name].append(measure(approach.command, approach.env))
            print(f"round {round_number + 1}, {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return {
        name: {
            "wall_s": [round(w, 3) for w, _, _ in measured_runs],
            "wall_median_s": statistics.median(w for w, _, _ in measured_runs),
            "cpu_median_s": statistics.median(c for _, c, _ in measured_runs),
            "peak_rss_mb": max(r for _, _, r in measured_runs),
        }
        for name, measured_runs in runs.items()
    }


def print_table(results: dict[str, dict], params: int, model_bytes: int, repeats: int) -> None:
    floor = results["io-floor"]["wall_median_s"]
    mergekit_wall = results.get("mergekit task_arithmetic", {}).get("wall_median_s")
    print(
        f"\n{params / 1e9:.2f} B parameters per model, bf16, {model_bytes / 1e9:.2f} GB per model, "
        f"{os.cpu_count()} CPUs, {repeats} runs each (medians)\n"
    )
    print("| approach | wall median (s) | runs (s) | CPU median (s) | peak RSS (MB) | x I/O floor | mergekit / this |")
    print("|---|---|---|---|---|---|---|")
    for name, result in results.items():
        wall = result["wall_median_s"]
        versus = f"{mergekit_wall / wall:.1f}x" if mergekit_wall else "-"
        print(
            f"| {name} | {wall:.2f} | {', '.join(f'{w:.2f}' for w in result['wall_s'])} | "
            f"{result['cpu_median_s']:.2f} | {result['peak_rss_mb']:.0f} | {wall / floor:.2f} | {versus} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path("/tmp"), help="where to build the models (default /tmp)")
    parser.add_argument("--scale", type=int, default=1, help="model size multiplier (layers x scale)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mergekit-python", type=Path, default=Path("/tmp/mergekit-venv/bin/python"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic models")
    parser.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)  # the builder subprocess
    args = parser.parse_args()
    if args.build_only:
        from shadowft.data.hub import link_local_model

        for role, path in build_triple(args.build_only / "built", LAYERS_PER_SCALE * args.scale).items():
            link_local_model(path, args.build_only / role)  # as the workflow's download_model rule does
        return

    python = str(ROOT / ".venvs" / "core" / "bin" / "python")
    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="shadowft-bench-", dir=args.dir))
    try:
        print(f"building a {args.scale}x triple under {work} ...", file=sys.stderr, flush=True)
        subprocess.run([python, __file__, "--scale", str(args.scale), "--build-only", str(work / "models")], check=True)
        model_bytes = sum(p.stat().st_size for p in (work / "models" / "built" / "base").glob("*.safetensors"))
        measured = approaches(work, [python, "-m", "shadowft.cli"], python)
        if args.mergekit_python.exists():
            measured["mergekit task_arithmetic"] = mergekit_approach(work, args.mergekit_python)
        else:
            print(f"mergekit not measured: {args.mergekit_python} does not exist", file=sys.stderr)
        results = run_all(work, measured, args.repeats, model_bytes)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    params = sum(math.prod(shape) for _, shape in llama_tensors(LAYERS_PER_SCALE * args.scale))
    print_table(results, params, model_bytes, args.repeats)
    if args.json:
        summary = {"scale": args.scale, "params": params, "model_bytes": model_bytes, "results": results}
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
