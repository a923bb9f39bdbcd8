"""Shards: one stage's work split over n processes that write into ONE artifact, and the merge of their parts.

    thinkrl sample ... --shard 0/2 --out runs/r     # on one node (or one process)
    thinkrl sample ... --shard 1/2 --out runs/r     # on another, same --out on a shared filesystem
    thinkrl merge runs/r                            # only needed when the last shard died while merging

Parts are cut over the WHOLE input, exactly as a 1-process run cuts them (sample and eval: `part_size`
problems, judge: `part_size` rollouts, segment: `part_size` groups, each in input order), and shard k takes
the parts i % n == k (`Plan.mine`). So a part's name, its rows and its contents never depend on n: sampling
seeds derive from (seed, round, problem, sample) and a part is one engine call over the same problems, a judge
verdict depends on its rollout alone, a group's advantages on its group alone. The merged tables are the
1-process run's, byte for byte, and the shard is no part of the stage's key or manifest config (every shard
of one job shares one key; `thinkrl run` and a 1-process stage are shard 0/1).

Each shard writes its part files into OUT/_parts/<table>/ (the ArtifactWriter's), then, after its last part, a
marker OUT/_parts/_shards/shard-K-of-N.json (tmp + rename): the stage, the key and the parts key (key + part
layout), n, k, the parts it owns, every part the whole input needs, the writer's config and inputs and its run's
figures (seconds, new tokens...). Then it takes the merge lock (`fcntl.flock` on OUT/_parts/_merge.lock:
released when its holder dies, also over NFS on Linux) and looks at the markers: while some shard is missing it
exits 0 with `shard 0/2 done; waiting for shards 1 ...`; the shard that finds all n merges, under the lock, so
exactly one does. A merge (`merge`, also `thinkrl merge OUT`) checks that shards 0..n-1 are each there once,
of one key and one n, and that every part the input needs is present once per table (none missing, none extra),
then finishes the artifact with the stage's own finisher (`FINISHERS`: the same metrics, computed from the
merged tables; run figures such as seconds and new tokens are summed over the shards, tokens_per_s is their
quotient; the manifest's metrics gain `shards: n`). Finishing removes _parts, so a shard that takes the lock
after the merge finds the manifest and reports it.

A killed shard rerun with the same command resumes from its finished parts (ArtifactWriter.part_done); a part
written by any shard, or by a 1-process run of the same key, is the same part. A shard of another config or
inputs is refused before it writes (ArtifactWriter: OUT/_parts holds a sharded job of another key).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import importlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from thinkrl.artifacts import (
    MANIFEST,
    PARTS,
    SHARD_MARKERS,
    ArtifactWriter,
    StageResult,
    read_manifest,
    write_text_atomic,
)
from thinkrl.errors import ThinkrlError
from thinkrl.settings import setting

SHARDS = SHARD_MARKERS      # OUT/_parts/_shards/shard-K-of-N.json: one marker per finished shard
LOCK = "_merge.lock"        # OUT/_parts/_merge.lock: held while a shard looks at the markers and merges


def parse_shard(text: str) -> tuple[int, int]:
    """'k/n' -> (k, n) with 0 <= k < n."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ThinkrlError(f"--shard {text!r}: expected k/n, e.g. 0/4") from None
    if not 0 <= k < n:
        raise ThinkrlError(f"--shard {text!r}: need 0 <= k < n")
    return k, n


@dataclass(frozen=True)
class ShardSettings:
    """The shard setting, declared once; sample, judge, segment and eval take it `same_as` this."""

    shard: tuple[int, int] = setting((0, 1), "k/n: this process does parts i % n == k of the whole input; all n "
                                             "shards write into one --out and the last to finish merges them into "
                                             "one artifact (not part of the key: the same tables as one process)",
                                     parse=parse_shard)


@dataclass(frozen=True)
class Plan:
    """Every part the whole input needs, in order, and the shard that runs some of them."""

    parts: tuple[str, ...]
    shard: tuple[int, int] = (0, 1)

    @property
    def mine(self) -> tuple[str, ...]:
        k, n = self.shard
        return tuple(p for i, p in enumerate(self.parts) if i % n == k)

    @property
    def name(self) -> str:
        return f"{self.shard[0]}/{self.shard[1]}"

    def share(self, sizes: Sequence[int]) -> int:
        """The items in this shard's parts, given the items of every part (aligned with `parts`)."""
        k, n = self.shard
        return sum(size for i, size in enumerate(sizes) if i % n == k)


def cuts(total: int, size: int) -> list[tuple[int, int]]:
    """(start, length) of the parts of `size` items over `total` items."""
    return [(s, min(size, total - s)) for s in range(0, total, size)]


def part_names(total: int, size: int, prefix: str = "") -> list[str]:
    """The part files `{prefix}{index:06d}` of `total` items cut `size` at a time."""
    return [f"{prefix}{i:06d}" for i in range(len(cuts(total, size)))]


def marker_name(k: int, n: int) -> str:
    return f"shard-{k}-of-{n}.json"


# the stage finishers: finish(writer, runs) -> metrics, where runs are the shards' run figures (one dict per shard,
# in shard order); each reads the merged parts, writes the tables and the manifest (ArtifactWriter.finish)
FINISHERS: dict[str, tuple[str, str]] = {
    "sample": ("thinkrl.sampling", "finish_sample"),
    "judge": ("thinkrl.judge.judging", "finish_judge"),
    "segment": ("thinkrl.segment", "finish_segment"),
    "eval": ("thinkrl.evaluate", "finish_eval"),
}


def finisher(stage: str) -> Callable[[ArtifactWriter, list[dict]], dict]:
    if stage not in FINISHERS:
        raise ThinkrlError(f"stage {stage!r} has no sharded form (known: {', '.join(FINISHERS)})")
    module, name = FINISHERS[stage]
    return getattr(importlib.import_module(module), name)


def begin(writer: ArtifactWriter, plan: Plan) -> None:
    """A shard starts (or starts again): the marker of its earlier finish is withdrawn first, so no other shard
    merges parts this one is about to redo (a rerun asking again for failed requests, say)."""
    k, n = plan.shard
    if n > 1:
        (writer.out / PARTS / SHARDS / marker_name(k, n)).unlink(missing_ok=True)


def forget_markers(out: Path) -> None:
    """Remove every shard's marker in OUT, keeping the parts. Only for a caller that knows no shard of OUT is
    running: `thinkrl run`, holding its run's lock, before each sharded stage, so that a rerun with another
    number of ranks, or after a changed setting, goes on (parts of the same key are reused whoever wrote them;
    parts of another key are then stale, as for one process) instead of finding markers of another job."""
    d = Path(out) / PARTS / SHARDS
    for f in d.glob("shard-*.json") if d.is_dir() else []:
        f.unlink(missing_ok=True)


def complete(writer: ArtifactWriter, plan: Plan, tables: Sequence[str], run: dict,
             finish: Callable[[ArtifactWriter, list[dict]], dict]) -> StageResult:
    """A stage has written every part of `plan.mine` (tables `tables`): one process finishes at once; a shard
    records its marker and merges when it is the last (else StageResult.pending says whom it waits for)."""
    k, n = plan.shard
    if n == 1:
        return StageResult(writer.out, False, finish(writer, [run]))
    marker = {"stage": writer.stage, "key": writer.key, "parts_key": writer.parts_key, "k": k, "n": n,
              "parts": list(plan.mine), "all_parts": list(plan.parts), "tables": list(tables),
              "writer": writer.record(), "run": run,
              "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    writer.open_parts(tables)  # a shard with no part of its own (more shards than parts) has not made them yet
    d = writer.out / PARTS / SHARDS
    d.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(marker, indent=1) + "\n", d / marker_name(k, n))
    return merge(writer.out, writer=writer, finish=finish, caller=plan.shard)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """Hold an exclusive flock on `path` (False when its directory is gone: the parts were merged)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    except FileNotFoundError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # releases the lock


def read_markers(out: Path) -> list[dict]:
    d = Path(out) / PARTS / SHARDS
    markers = []
    for f in sorted(d.glob("shard-*.json")) if d.is_dir() else []:
        try:
            m = json.loads(f.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ThinkrlError(f"{f}: not a shard marker ({e}); remove it and rerun that shard") from None
        if not isinstance(m, dict) or not {"stage", "key", "parts_key", "k", "n", "parts", "all_parts"} <= set(m):
            raise ThinkrlError(f"{f}: not a shard marker (expected stage, key, n, k, parts); remove it and rerun "
                               "that shard")
        markers.append({**m, "_file": f.name})
    return markers


def check_markers(out: Path, markers: list[dict]) -> list[int]:
    """One job's markers: one key and one n, no shard twice, the parts key of OUT/_parts. Returns the missing
    shards."""
    parts_key = (Path(out) / PARTS / "key").read_text().strip()
    first = markers[0]
    for m in markers:
        if m["key"] != first["key"] or m["parts_key"] != parts_key or m["stage"] != first["stage"]:
            raise ThinkrlError(f"{out}: shard {m['k']}/{m['n']} ({m['_file']}) belongs to another config or inputs "
                               f"than the parts in {PARTS}/ (key {m['key'][:12]}, parts key {m['parts_key'][:12]} vs "
                               f"{parts_key[:12]}); rerun it with the same settings and inputs as the other shards")
    ns = sorted({m["n"] for m in markers})
    if len(ns) > 1:
        by_n = "; ".join(f"n={n}: shards {', '.join(str(m['k']) for m in markers if m['n'] == n)}" for n in ns)
        raise ThinkrlError(f"{out}: shards of different n finished ({by_n}); every shard of one job needs the "
                           f"same n (rerun the job with one n, or remove the other markers in {PARTS}/{SHARDS})")
    n = ns[0]
    ks = [m["k"] for m in markers]
    if len(set(ks)) != len(ks) or not all(0 <= k < n for k in ks):
        raise ThinkrlError(f"{out}: shard markers of n={n} hold shards {sorted(ks)}; each of 0..{n - 1} must be "
                           "there once")
    return [k for k in range(n) if k not in ks]


def check_parts(out: Path, markers: list[dict]) -> None:
    """Every part the whole input needs is owned by one shard and present once in each table's parts."""
    need = markers[0]["all_parts"]
    if any(m["all_parts"] != need for m in markers):
        raise ThinkrlError(f"{out}: the shards disagree on the parts of the input; rerun them with the same "
                           "settings and inputs")
    owned = [p for m in markers for p in m["parts"]]
    twice = sorted({p for p in owned if owned.count(p) > 1})
    if twice or sorted(owned) != sorted(need):
        missing = sorted(set(need) - set(owned))
        raise ThinkrlError(f"{out}: the shards' parts do not cover the input once (missing {missing[:5]}, "
                           f"twice {twice[:5]}, of {len(need)} parts)")
    for table in markers[0]["tables"]:
        d = Path(out) / PARTS / table
        have = sorted(f.name[:-len(".parquet")] for f in d.glob("*.parquet")) if d.is_dir() else []
        missing, extra = sorted(set(need) - set(have)), sorted(set(have) - set(need))
        if missing or extra:
            raise ThinkrlError(f"{out}: {PARTS}/{table} lacks parts {missing[:5]} or holds parts {extra[:5]} the "
                               f"input does not need ({len(need)} needed, {len(have)} there); rerun the shard that "
                               "owns them")


def merge(out: str | Path, writer: ArtifactWriter | None = None,
          finish: Callable[[ArtifactWriter, list[dict]], dict] | None = None,
          caller: tuple[int, int] | None = None) -> StageResult:
    """Merge the shards' parts in OUT into its artifact, once. `caller`: the shard asking (it waits for missing
    shards: StageResult.pending); without it (`thinkrl merge`) a missing shard is an error."""
    out = Path(out)
    root = out / PARTS
    if not root.is_dir():
        return _merged_already(out, caller)
    with _locked(root / LOCK) as held:
        if not held or not (root / "key").is_file():
            return _merged_already(out, caller)  # another shard merged while we waited for the lock
        markers = read_markers(out)
        if not markers:
            raise ThinkrlError(f"{out}: no shard has finished ({PARTS}/{SHARDS} holds no marker): nothing to "
                               "merge; run the shards (`--shard k/n`) first")
        missing = check_markers(out, markers)
        n = markers[0]["n"]
        if missing:
            waiting = ", ".join(map(str, missing))
            if caller is None:
                raise ThinkrlError(f"{out}: shard(s) {waiting} of {n} have not finished (no marker in "
                                   f"{PARTS}/{SHARDS}); run them with the same command and --shard k/{n}")
            return StageResult(out, False, {}, pending=(
                f"shard {caller[0]}/{caller[1]} done; waiting for shards {waiting} (merge runs when the last "
                f"finishes, or `thinkrl merge {out}`)"))
        check_parts(out, markers)
        markers.sort(key=lambda m: m["k"])
        if writer is None:
            writer = ArtifactWriter.recorded(out, markers[0]["writer"])
        if writer.key != markers[0]["key"]:
            raise ThinkrlError(f"{out}: the shard markers' config and inputs do not hash to their key; rerun the "
                               "shards")
        metrics = (finish or finisher(writer.stage))(writer, [m.get("run", {}) for m in markers])
        return StageResult(out, False, metrics)


def _merged_already(out: Path, caller: tuple[int, int] | None) -> StageResult:
    if (out / MANIFEST).is_file():
        m = read_manifest(out)
        return StageResult(out, caller is None, m.get("metrics", {}))  # skipped: `thinkrl merge` had nothing to do
    what = f"shard {caller[0]}/{caller[1]}: " if caller else ""
    raise ThinkrlError(f"{what}{out}: nothing to merge: no {PARTS}/ directory and no {MANIFEST} (not the output "
                       "of a sharded stage, or its parts were removed)")


def sum_runs(runs: list[dict], *names: str) -> dict[str, float]:
    """The figures `names` summed over the shards' runs (absent ones count 0)."""
    return {k: sum(r.get(k) or 0 for r in runs) for k in names}
