"""Lineage: the rollouts, judgments and thoughts artifacts that belong together, found from any one of them.

    rel = related_artifacts("runs/x/round-000/thoughts")   # Related(rollouts, judgments, thoughts, notes, train)

Back through the manifests' inputs: a judgments manifest's `inputs.rollouts`, a thoughts manifest's
`inputs.rollouts` and `inputs.judgments` (the path as written, else a sibling directory of that name; the
one whose fingerprint matches the recorded sha256 wins, a changed one is used with a note). Forward through
sibling directories whose manifest inputs name this artifact by sha256
(`round-NNN/{rollouts,judgments,thoughts,train}`: the train artifact, for its `behaviour` table of log pi_old,
is the sibling whose `inputs.thoughts` is the thoughts artifact).
Used by the rollout view (`thinkrl/rollout_view.py: open_view`, `thinkrl inspect --rollout`).

Against the paper: tooling for looking at artifacts, not part of the method (docs/PAPER.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from thinkrl.artifacts import MANIFEST, fingerprint, input_path, read_manifest
from thinkrl.errors import ThinkrlError


# --------------------------------------------------------------------------------------------- finding artifacts
@dataclass
class Related:
    rollouts: Path
    judgments: Path | None
    thoughts: Path | None
    notes: list[str]
    train: Path | None = None


def _follow_input(art: Path, manifest: dict, name: str, notes: list[str]) -> Path | None:
    inp = (manifest.get("inputs") or {}).get(name)
    p = input_path(art, manifest, name)
    if not inp or p is None:
        return None
    candidates = [p, art.parent / p.name]  # where the manifest says (relative to the artifact), a sibling
    existing = [c for c in candidates if (c / MANIFEST).is_file()]
    for c in existing:
        if fingerprint(c) == inp.get("sha256"):
            return c
    if existing:
        notes.append(f"{existing[0]}: changed since {art} was made from it (sha256 differs): shown anyway")
        return existing[0]
    notes.append(f"{art}: its input {name} {p} is gone")
    return None


def policy_of(rollouts: Path, column: str) -> Path:
    """The policy directory that sampled the rollouts at `rollouts`: the manifest's `policy` input, relative to
    the artifact (so it is found in a copied run), when it is there; else the `policy` column as written."""
    p = input_path(rollouts, read_manifest(rollouts), "policy")
    return p if p is not None and p.exists() else Path(column)


def _siblings_using(target: Path, name: str) -> list[Path]:
    """Artifacts beside `target` whose manifest input `name` is `target` (same sha256)."""
    sha = fingerprint(target)
    found = []
    for d in sorted(target.parent.iterdir()):
        if d == target or not (d / MANIFEST).is_file():
            continue
        try:
            inp = (read_manifest(d).get("inputs") or {}).get(name)
        except ThinkrlError:
            continue
        if inp and inp.get("sha256") == sha:
            found.append(d)
    return found


def related_artifacts(path: str | Path) -> Related:
    """The rollouts, judgments and thoughts artifacts that belong together, starting from any of them."""
    p = Path(path)
    m = read_manifest(p)
    tables, notes = m["outputs"], []
    rollouts = judgments = thoughts = None
    if "rollouts" in tables:
        rollouts = p
    elif "judgments" in tables:
        judgments, rollouts = p, _follow_input(p, m, "rollouts", notes)
    elif "thoughts" in tables:
        thoughts = p
        rollouts, judgments = _follow_input(p, m, "rollouts", notes), _follow_input(p, m, "judgments", notes)
    else:
        raise ThinkrlError(f"{p}: a '{m.get('stage')}' artifact (tables: {', '.join(tables)}); the rollout view "
                           "starts from a rollouts, judgments or thoughts artifact")
    if rollouts is None:
        raise ThinkrlError(f"{p}: cannot find the rollouts it was made from (manifest inputs.rollouts); "
                           "pass the rollouts artifact as PATH")
    if judgments is None:
        found = _siblings_using(rollouts, "rollouts")
        judgments = next((d for d in found if "judgments" in read_manifest(d)["outputs"]), None)
    if thoughts is None:
        found = _siblings_using(judgments, "judgments") if judgments else _siblings_using(rollouts, "rollouts")
        thoughts = next((d for d in found if "thoughts" in read_manifest(d)["outputs"]), None)
    train = None
    if thoughts is not None:
        train = next((d for d in _siblings_using(thoughts, "thoughts")
                      if "train_metrics" in read_manifest(d)["outputs"]), None)
    return Related(rollouts, judgments, thoughts, notes, train)
