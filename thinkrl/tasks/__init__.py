"""Tasks: procedurally generated problems with exactly checkable steps.

`arith` holds ArithChain, the embedded default task (DESIGN §5): problem generation, the flawed
warm-start corpus, and the oracle step labeller used to measure judges.
"""

from thinkrl.tasks.arith import (
    ArithConfig,
    ArithProblem,
    CorpusConfig,
    CorpusExample,
    OracleLabels,
    StepRecord,
    canonical_solution,
    corpus_stats,
    flawed_solution,
    generate_problems,
    make_corpus,
    oracle_label,
    problem_from_question,
)

__all__ = [
    "ArithConfig",
    "ArithProblem",
    "CorpusConfig",
    "CorpusExample",
    "OracleLabels",
    "StepRecord",
    "canonical_solution",
    "corpus_stats",
    "flawed_solution",
    "generate_problems",
    "make_corpus",
    "oracle_label",
    "problem_from_question",
]
