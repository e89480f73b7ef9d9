"""How large each job of the plan is, stated by the rule itself:

    resources: **SIZES.job(Workload.EVALUATE, model="model", tokens=SIZES.evaluation_tokens)

The node the jobs run on is what the profile's ``default-resources`` describe (``node_gpus``,
``node_cpus``, ...: profiles/slurm/), or this machine when they say nothing. A job's size comes
from the parameter count of the model it works on (its input named by `model`, read from the
checkpoint's headers), the kind of work (shadowft.training.resources.Workload) and what it
processes (`tokens`). While that model does not exist yet (a dry run before the download) the
pair's base is sized instead when it is on disk, else the count the pair declares (a family's),
else the value is `unknown` (Snakemake's <TBD>, which rules/common.smk hands over) and the
scheduler computes it once the input is there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from shadowft.evaluation.spec import benchmark_spec
from shadowft.training.arguments import PAPER_DEFAULTS
from shadowft.training.resources import (
    ENGINE_THREADS,
    JobResources,
    Node,
    Workload,
    count_parameters,
    dataset_tokens,
    size_job,
)
from shadowft.workflow.plan import Plan

# A standard benchmark's size is not known before it is prefetched: sized as this many questions.
UNKNOWN_QUESTIONS = 1000


@cache
def _parameters_of(folder: str, modified: int) -> int:
    return count_parameters(Path(folder))


def parameters_of(folder: str | os.PathLike) -> int | None:
    """The parameter count of a model folder, or None while the folder does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    return _parameters_of(str(folder.resolve()), folder.stat().st_mtime_ns)


# The resources of a rule's spread that a profile's set-resources may ask for (size_job's keywords).
SPREAD_RESOURCES = ("gpu", "nodes")


class Sizer:
    """Job sizes for the rules of `plan` on `node`; `node_described` says whether a profile
    described the node (a cluster) or it is this machine; `unknown` is what a size is while the
    job's model is not there; `requested` holds, by rule, the GPUs and nodes the profile's
    set-resources ask for (SPREAD_RESOURCES), which the job is then sized for."""

    def __init__(
        self,
        plan: Plan,
        node: Node,
        *,
        node_described: bool,
        unknown: Any = None,
        requested: Mapping[str, Mapping[str, int]] | None = None,
    ):
        self.plan = plan
        self.node = node
        self.node_described = node_described
        self.unknown = unknown
        self.requested = dict(requested or {})
        self._sizes: dict[tuple, JobResources | None] = {}

    @property
    def tool_threads(self) -> int:
        """Threads of a training or evaluation job: one GPU's share of a cluster node's CPUs.

        Locally, one: on a laptop these jobs are the demo's, mostly start-up and small matrices,
        where two one-thread jobs side by side beat one two-thread job (measured on 2 cores).
        """
        if not self.node_described:
            return 1
        return self.node.cpus_per_gpu if self.node.gpus else self.node.cpus

    @property
    def engine_threads(self) -> int:
        """Threads of the delta engine's jobs (extract, graft, similarity)."""
        return min(ENGINE_THREADS, self.node.cpus)

    def job(
        self,
        workload: Workload | Callable[[Any], Workload],
        *,
        model: str,
        tokens: Callable[[Any, Any], float] | None = None,
    ) -> dict[str, Any]:
        """The resources of a rule: its `workload` (or a function of the job's wildcards giving
        it), the name of its input holding the model it works on, and what it processes
        (`tokens(wildcards, input)`, for the wall time). GPU work states its GPUs, training also
        its nodes; every job states its memory and time."""

        def size(wildcards, input, attempt, rulename) -> JobResources | None:
            chosen = workload(wildcards) if callable(workload) else workload
            key = (id(size), rulename, tuple(wildcards.items()), attempt, tuple(map(os.path.exists, input)))
            if key not in self._sizes:
                parameters = self._parameters(wildcards, getattr(input, model))
                self._sizes[key] = None
                if parameters is not None:
                    processed = tokens(wildcards, input) if tokens is not None else 0.0
                    spread = self.requested.get(rulename, {})
                    self._sizes[key] = size_job(
                        chosen, parameters, self.node, attempt=attempt, tokens=processed, **spread
                    )
            return self._sizes[key]

        def field(value: Callable[[JobResources], Any], unknown: Any = self.unknown) -> Callable:
            # Snakemake passes a resource function the arguments it names: `rulename` tells a
            # rule from the rules that `use` it (demo_train is train's), each with its own
            # set-resources.
            def resource(wildcards, input, attempt, rulename):
                job = size(wildcards, input, attempt, rulename)
                return unknown if job is None else value(job)

            return resource

        resources = {"mem_mb": field(lambda job: job.mem_mb), "runtime": field(lambda job: job.runtime)}
        examples = [workload] if isinstance(workload, Workload) else list(Workload)
        if any(example.uses_gpus for example in examples):
            resources["gpu"] = field(lambda job: job.gpu)
            resources["cpus_per_gpu"] = self.node.cpus_per_gpu
        if any(example.is_training for example in examples):
            resources["nodes"] = field(lambda job: job.nodes)
            # Over several nodes the SLURM executor runs the command in the allocation itself
            # (not in a one-task job step), and the command starts one launcher per node with
            # srun (shadowft.training.launch), each starting one process per GPU.
            resources["mpi"] = field(lambda job: "srun" if job.nodes > 1 else None, unknown=None)
            # A process per GPU; the executor refuses an `mpi` job of one task per node (as a
            # mistake), so one GPU per node asks for two: the launcher is one task either way.
            resources["tasks_per_node"] = field(
                lambda job: max(job.gpus_per_node, 2) if job.nodes > 1 else None, unknown=None
            )
            # `gpu` is the job's total (sbatch --gpus), which SLURM spreads as it likes so long
            # as every node has one (sbatch(1)); every node runs as many processes, so a job
            # over several nodes also asks for its GPUs per node (--gres, per node).
            resources["gres"] = field(
                lambda job: f"gpu:{job.gpus_per_node}" if job.nodes > 1 and job.gpu else None, unknown=None
            )
        return resources

    def _parameters(self, wildcards, model_dir: str) -> int | None:
        """The size of a job's model: its own input, else (planning) the pair's base, the same
        architecture, else (before the download) the count the pair declares (a family's)."""
        own = parameters_of(model_dir)
        if own is not None or "pair" not in dir(wildcards):
            return own
        planned = parameters_of(self.plan.planning_model(wildcards.pair))
        if planned is not None:
            return planned
        return self.plan.config["pairs"][wildcards.pair].get("parameters")

    def training_workload(self, wildcards) -> Workload:
        run = self.plan.run_of(wildcards)
        return Workload.training(run.tuning, run.stage)

    def training_tokens(self, wildcards, input) -> float:
        """Training data times epochs (the run's, else the paper's default)."""
        if not os.path.isdir(input.dataset):
            return 0.0
        epochs = self.plan.epochs(wildcards) if "run" in dir(wildcards) else None
        return dataset_tokens(Path(input.dataset)) * (epochs or float(PAPER_DEFAULTS["num_train_epochs"]))

    def evaluation_tokens(self, wildcards, input) -> float:
        """Generated tokens: questions times the most tokens an answer may take."""
        questions_file = Path(input.data) / "eval.jsonl"
        spec = benchmark_spec(wildcards.benchmark, self.plan.benchmark(wildcards.benchmark), questions_file)
        questions = UNKNOWN_QUESTIONS
        if questions_file.is_file():
            with open(questions_file, encoding="utf-8") as lines:
                questions = sum(1 for _ in lines)
        return questions * spec.answer_budget
