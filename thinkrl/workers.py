"""Several experiments at once: each `thinkrl run` in its own worker process, their displays forwarded.

    run_experiments({"grpo": (cfg_a, Path("runs/grpo")), "tp": (cfg_b, Path("runs/tp"))}, jobs=2)

Workers are spawned (no fork after torch has started its threads), each with its experiment's `threads`, so two
1-thread runs use both cores of a 2-core machine; results are the same as running them one after another.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

from thinkrl.errors import ThinkrlError
from thinkrl.experiment import ExperimentConfig
from thinkrl.rounds import Display, run_experiment


class _QueueDisplay(Display):
    """Forwards a worker's display events to the parent process (advance events at most every 0.2 s)."""

    def __init__(self, queue, name: str):
        self.queue, self.name, self.units, self.tokens, self.last = queue, name, 0, 0, 0.0

    def _send(self, method: str, *args) -> None:
        self.queue.put((self.name, method, args))

    def _flush(self) -> None:
        if self.units or self.tokens:
            self._send("advance", self.units, self.tokens)
            self.units = self.tokens = 0
        self.last = time.monotonic()

    def begin(self, name, cfg) -> None:
        self._send("begin", name, cfg)

    def stage(self, round_, stage, total=None) -> None:
        self._flush()
        self._send("stage", round_, stage, total)

    def advance(self, units=0, tokens=0) -> None:
        self.units, self.tokens = self.units + units, self.tokens + tokens
        if time.monotonic() - self.last > 0.2:
            self._flush()

    def done(self, round_, stage, text, skipped=False) -> None:
        self._flush()
        self._send("done", round_, stage, text, skipped)

    def accuracy(self, round_, samples, value) -> None:
        self._send("accuracy", round_, samples, value)

    def end(self, summary) -> None:
        self._send("end", summary)


def _worker(name: str, cfg: ExperimentConfig, run_dir: Path, queue) -> None:
    try:
        queue.put((name, "__result__", (run_experiment(cfg, run_dir, _QueueDisplay(queue, name)),)))
    except ThinkrlError as e:
        queue.put((name, "__error__", (str(e),)))
    except BaseException as e:  # a bug: the parent reports it, the worker's traceback goes to stderr
        queue.put((name, "__error__", (f"{type(e).__name__}: {e}",)))
        raise


def run_experiments(runs: Mapping[str, tuple[ExperimentConfig, Path]], jobs: int = 1,
                    display: Callable[[str], Display] | None = None) -> dict[str, dict]:
    """Run several experiments; `jobs` > 1 runs that many at once in worker processes (each with its own
    `threads`), so two 1-thread runs use both cores of a 2-core machine. Results are the same either way.
    display(name) gives each run's Display (events are forwarded from the workers). Returns name -> summary."""
    display = display or (lambda name: Display())
    if jobs <= 1 or len(runs) <= 1:
        return {name: run_experiment(cfg, d, display(name)) for name, (cfg, d) in runs.items()}
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")  # no fork after torch has started its threads
    q = ctx.Queue()
    pending, active, results = list(runs.items()), {}, {}
    try:
        while pending or active:
            while pending and len(active) < jobs:
                name, (cfg, d) = pending.pop(0)
                active[name] = ctx.Process(target=_worker, args=(name, cfg, Path(d), q), daemon=False)
                active[name].start()
            for name, proc in list(active.items()):  # a worker that died (killed, out of memory) sent no result
                if proc.exitcode not in (None, 0):
                    raise ThinkrlError(f"run {name}: worker process exited with code {proc.exitcode} "
                                       "(its traceback, if any, is above)")
            try:
                name, method, args = q.get(timeout=0.5)
            except queue_mod.Empty:
                for name, proc in list(active.items()):
                    if proc.exitcode is not None and q.empty():
                        raise ThinkrlError(f"run {name}: worker process exited with code {proc.exitcode}") from None
                continue
            if method == "__result__":
                results[name] = args[0]
                active.pop(name).join()
            elif method == "__error__":
                raise ThinkrlError(f"run {name}: {args[0]}")
            else:
                getattr(display(name), method)(*args)
    finally:
        for proc in active.values():
            proc.terminate()
            proc.join()
    return {name: results[name] for name in runs}

