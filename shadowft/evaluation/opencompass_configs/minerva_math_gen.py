"""Minerva-math (the 272 MIT OCW problems of Lewkowycz et al., 2022) in OpenCompass's format.

OpenCompass 0.5.4 ships no config for it. This one asks each problem the way its
MATH-500 config does (0-shot, answer in \\boxed{}) and scores with the same evaluator.
The data is one JSON-lines file under COMPASS_DATA_CACHE, ``data/minerva_math/test.jsonl``,
each line ``{"problem": str, "solution": str}``; OpenCompass has no download for it, so
``prefetch_benchmarks`` takes it from ``evaluation.dataset_urls`` (a zip holding
``minerva_math/test.jsonl``) or finds it already in the cache.
"""

from opencompass.datasets import CustomDataset
from opencompass.evaluator import MATHVerifyEvaluator
from opencompass.openicl.icl_inferencer import GenInferencer
from opencompass.openicl.icl_prompt_template import PromptTemplate
from opencompass.openicl.icl_retriever import ZeroRetriever

minerva_math_reader_cfg = dict(input_columns=["problem"], output_column="solution")

minerva_math_infer_cfg = dict(
    prompt_template=dict(
        type=PromptTemplate,
        template=dict(
            round=[
                dict(
                    role="HUMAN",
                    prompt="{problem}\nPlease reason step by step, and put your final answer within \\boxed{}.",
                ),
            ]
        ),
    ),
    retriever=dict(type=ZeroRetriever),
    inferencer=dict(type=GenInferencer),
)

minerva_math_eval_cfg = dict(evaluator=dict(type=MATHVerifyEvaluator))

minerva_math_datasets = [
    dict(
        type=CustomDataset,
        abbr="minerva_math",
        path="data/minerva_math",
        file_name="test.jsonl",
        reader_cfg=minerva_math_reader_cfg,
        infer_cfg=minerva_math_infer_cfg,
        eval_cfg=minerva_math_eval_cfg,
    )
]
