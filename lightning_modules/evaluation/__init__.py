"""Evaluation as a library: the runner (checkpoint x data x rig rows), the scores' summaries and the report files.

``tools.evaluate`` is its command line: ``run_evaluation(EvalSettings(...))`` returns the results dict and writes
results.json / .csv / .md and grids/ into ``EvalSettings.out``.
"""

from lightning_modules.evaluation.report import csv_row, jsonable, markdown, write_results
from lightning_modules.evaluation.runner import EvalSettings, run_evaluation
from lightning_modules.evaluation.summary import score_views, summarize

__all__ = ["EvalSettings", "csv_row", "jsonable", "markdown", "run_evaluation", "score_views", "summarize",
           "write_results"]
