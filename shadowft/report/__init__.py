"""The report: the evaluation scores as a tidy table and as the paper's tables (Markdown, HTML),
and the same tables drawn.

The report reads every scores.csv of the experiment, one `ScoreRecord` each (``records``), stacks
them into summary.csv and writes the paper's layout (``tables``: per pair and sweep setting one
table, variants as rows, each score with its difference from Instruct and, for the graft and the
tuned base, from Instruct tuned directly in the same setting; seeds averaged) as one document
(``document``) rendered twice (``render``, ``summary``); ``figures`` draws them, ``seeds`` compares
runs with different seeds. ``python -m shadowft.report`` is the rules' command line.
"""

from shadowft.exports import public_names

__all__, __getattr__, __dir__ = public_names(
    __name__,
    {
        "records": ["ScoreRecord", "read_summary", "tidy_scores"],
        "summary": ["summarize"],
        "tables": ["ScoreTable", "pair_tables"],
        "figures": ["draw_figures", "plot_training_loss"],
        "seeds": ["render_seed_spread", "seed_spread"],
    },
)
