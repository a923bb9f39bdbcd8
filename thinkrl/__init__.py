"""thinkrl: RL for math reasoning with thought-level process rewards from a generative judge (TP-GRPO).

The library is importable on its own: no typer, no argv, no global state. The CLI lives in `stages/`.
"""

__version__ = "0.1.0"
