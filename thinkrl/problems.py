"""Problem sets: known benchmarks, any JSONL/Parquet file, and (later) synthetic tasks, as a problems table.

Every source is normalised to the `problems` schema (`thinkrl.artifacts.PROBLEMS`): problem_id, source,
question, answer (a string), meta (a JSON object of the source's other fields).

    from thinkrl.problems import load_benchmark, load_file, list_benchmarks, named_problems, resolve_data_dir
    df = load_benchmark("math500", resolve_data_dir(None))          # 500 rows, row count checked
    df = load_file(Path("my.jsonl"), question_col="prompt", answer_col="target")
    df = named_problems("aime24", data_dir, limit=5)                 # a task, benchmark or file by name

CLI: `thinkrl data list`, `thinkrl data prepare NAME|FILE --out DIR` (stages/data.py).

The data directory is `--data-dir`, else `$THINKRL_DATA_DIR`, else `./data`; it holds the files named
in `BENCHMARKS` (in this environment ../shared/data, see its MANIFEST.md for sources and licenses).

problem_id (unique within a set, stable across runs, never contains `/`), always `{set}-{key}`:
    math500, math_train, math_train_hard   key from MATH `unique_id`: test/precalculus/807.json -> precalculus-807
    aime24, aime25, amc23                  the file's own `id`: aime24-60 ... aime24-89, aime25-0, amc23-0
    gsm8k, gsm8k_train                     0-based line index (no id in the source): gsm8k-0000 ... gsm8k-1318
    processbench_*                         ProcessBench `id` without its subset prefix: processbench_math-17
    a FILE                                 its --id-col value as given, else `{source}-{index:04d}`
Answers are strings as the source gives them: AIME "025" keeps its zero, AMC's JSON float 27.0 becomes
"27.0", GSM8K's gold answer is the text after `####` with thousands commas removed (the worked solution
goes to meta.solution). ProcessBench has no gold final answer: answer is "" and meta keeps steps, label
(index of the first wrong step, -1 if none), final_answer_correct and generator. Two MATH train problems
(math_train-number_theory-7115 and -7117, also in math_train_hard) have answer "": their source solution
ends in an empty `\\boxed{}`. An answer of "" always means "no gold answer".

Bad input (missing file, non-UTF-8 bytes, invalid JSON line, a line that is not an object, no rows, missing
field or column, corrupt Parquet, wrong row count) raises `ThinkrlError` with one line naming the file
(and the line or column).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from thinkrl.artifacts import PROBLEMS, sha256_json, to_frame, validate_frame
from thinkrl.errors import ThinkrlError
from thinkrl.settings import check_settings, setting

DATA_ENV = "THINKRL_DATA_DIR"
DATA_DIR_HELP = f"benchmark data directory (default ${DATA_ENV}, else ./data)"

Record = tuple[str, dict]  # (where in the file: "line 12" / "row 3" / "item 0", the record)


class _BadRow(ValueError):
    """A record that cannot be mapped; the caller adds the file and line."""


# --------------------------------------------------------------------------------------------- reading
def _check_file(path: Path) -> None:
    if not path.exists():
        raise ThinkrlError(f"{path}: no such file")
    if not path.is_file():
        raise ThinkrlError(f"{path}: is a directory, expected a .jsonl, .json or .parquet file")


def _read_text(path: Path) -> str:
    _check_file(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ThinkrlError(f"{path}: cannot read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ThinkrlError(f"{path}: line {line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"
                           ) from None
    return text.removeprefix("\ufeff")


_JSON_TYPE = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
              type(None): "null"}


def _parse_json(text: str, path: Path, where: str | None = None) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ThinkrlError(f"{path}: {where or f'line {e.lineno}'}: invalid JSON ({e.msg} at column {e.colno})"
                           ) from None
    except RecursionError:
        raise ThinkrlError(f"{path}: {where}: invalid JSON (nested too deeply)") from None


def _object(value: Any, path: Path, where: str) -> dict:
    if not isinstance(value, dict):
        raise ThinkrlError(f"{path}: {where}: expected a JSON object, got {_JSON_TYPE.get(type(value), 'a value')}")
    return value


def _read_jsonl(path: Path) -> list[Record]:
    records = []
    for n, line in enumerate(_read_text(path).split("\n"), 1):  # not splitlines(): U+2028 may sit inside strings
        if line.strip():
            records.append((f"line {n}", _object(_parse_json(line, path, f"line {n}"), path, f"line {n}")))
    return records


def _read_json(path: Path) -> list[Record]:
    """A JSON array of objects; a .json file that holds JSON lines is read as JSONL."""
    text = _read_text(path)
    if not text.lstrip().startswith("["):
        return _read_jsonl(path)
    items = _parse_json(text, path)
    return [(f"item {i}", _object(v, path, f"item {i}")) for i, v in enumerate(items)]


def _read_parquet(path: Path) -> list[Record]:
    _check_file(path)
    try:
        df = pl.read_parquet(path)
    except Exception as e:  # polars raises several error types for damaged files
        first = (str(e).splitlines() or [""])[0][:160]
        raise ThinkrlError(f"{path}: not a readable Parquet file ({type(e).__name__}: {first})") from None
    return [(f"row {i}", r) for i, r in enumerate(df.to_dicts())]


READERS: dict[str, Callable[[Path], list[Record]]] = {
    ".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet,
}


def read_records(path: Path) -> list[Record]:
    """Records of a JSONL / JSON-array / Parquet file, each with where it sits in the file. At least one."""
    path = Path(path)
    _check_file(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ThinkrlError(f"{path}: unsupported file type '{path.suffix}' (expected {', '.join(READERS)})")
    records = reader(path)
    if not records:
        raise ThinkrlError(f"{path}: no rows (empty file)")
    return records


# --------------------------------------------------------------------------------------------- fields
def _get(rec: dict, name: str) -> Any:
    if name not in rec:
        raise _BadRow(f"missing field '{name}' (has: {', '.join(map(str, rec)) or 'none'})")
    return rec[name]


def _text(rec: dict, name: str) -> str:
    v = _get(rec, name)
    if not isinstance(v, str):
        raise _BadRow(f"field '{name}' is {_JSON_TYPE.get(type(v), type(v).__name__)}, expected a string")
    return v


def _question(rec: dict, name: str) -> str:
    q = _text(rec, name)
    if not q.strip():
        raise _BadRow(f"field '{name}' is empty, expected the problem text")
    return q


def _answer(rec: dict, name: str) -> str:
    """A gold answer as the source gives it: strings as they are, numbers through str() (27.0 -> "27.0")."""
    v = _get(rec, name)
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise _BadRow(f"field '{name}' is {_JSON_TYPE.get(type(v), type(v).__name__)}, expected a string or number")
    return v if isinstance(v, str) else str(v)


def _ident(rec: dict, name: str) -> str:
    v = _get(rec, name)
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise _BadRow(f"field '{name}' is {_JSON_TYPE.get(type(v), type(v).__name__)}, expected a string or integer id")
    return str(v)


def _rest(rec: dict, *used: str) -> dict:
    return {k: v for k, v in rec.items() if k not in used}


# --------------------------------------------------------------------------------------------- benchmarks
@dataclass(frozen=True)
class Mapped:
    key: str        # problem_id = f"{set}-{key}"
    question: str
    answer: str
    meta: dict


def _map_math(rec: dict, idx: int) -> Mapped:
    """MATH (MATH-500, MATH train): unique_id `test/precalculus/807.json` -> key `precalculus-807`."""
    uid = _text(rec, "unique_id")
    key = uid.split("/", 1)[-1].removesuffix(".json").replace("/", "-")
    return Mapped(key, _question(rec, "problem"), _answer(rec, "answer"), _rest(rec, "problem", "answer"))


def _map_competition(rec: dict, idx: int) -> Mapped:
    """AIME / AMC: own `id`; `question` duplicates `problem` in some files and is dropped when equal."""
    meta = _rest(rec, "problem", "answer")
    question = _question(rec, "problem")
    if meta.get("question") == question:
        del meta["question"]
    return Mapped(_ident(rec, "id"), question, _answer(rec, "answer"), meta)


def gsm8k_answer(solution: str) -> str:
    """GSM8K gold answer: the text after the last `####`, thousands commas removed ("#### 1,000" -> "1000")."""
    if "####" not in solution:
        raise _BadRow("field 'answer' has no '#### <final answer>' line")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def _map_gsm8k(rec: dict, idx: int) -> Mapped:
    solution = _text(rec, "answer")
    meta = {"solution": solution, **_rest(rec, "question", "answer")}
    return Mapped(f"{idx:04d}", _question(rec, "question"), gsm8k_answer(solution), meta)


def _map_processbench(rec: dict, idx: int) -> Mapped:
    """ProcessBench: no gold final answer (answer ""); steps, label, final_answer_correct, generator -> meta."""
    return Mapped(_ident(rec, "id").rsplit("-", 1)[-1], _question(rec, "problem"), "", _rest(rec, "problem"))


MAPPINGS: dict[str, Callable[[dict, int], Mapped]] = {
    "math": _map_math, "competition": _map_competition, "gsm8k": _map_gsm8k, "processbench": _map_processbench,
}


@dataclass(frozen=True)
class Benchmark:
    path: str      # relative to the data directory
    rows: int      # expected row count (a different count is an error)
    mapping: str   # key of MAPPINGS
    doc: str


BENCHMARKS: dict[str, Benchmark] = {
    "math500": Benchmark("math500/test.jsonl", 500, "math", "MATH-500 test subset (PRM800K split)"),
    "aime24": Benchmark("aime24/test.jsonl", 30, "competition", "AIME 2024 I+II"),
    "aime25": Benchmark("aime25/test.jsonl", 30, "competition", "AIME 2025 I+II"),
    "amc23": Benchmark("amc23/test.jsonl", 40, "competition", "AMC 12 2023 A+B, numeric answers"),
    "gsm8k": Benchmark("gsm8k/test.jsonl", 1319, "gsm8k", "GSM8K test"),
    "gsm8k_train": Benchmark("gsm8k/train.jsonl", 7473, "gsm8k", "GSM8K train"),
    "math_train": Benchmark("math_train/train.jsonl", 7500, "math", "MATH train split (7.5k)"),
    "math_train_hard": Benchmark("math_train/train_level3to5.jsonl", 5586, "math", "MATH train, levels 3-5"),
    "processbench_gsm8k": Benchmark("processbench/gsm8k.jsonl", 400, "processbench", "ProcessBench, GSM8K"),
    "processbench_math": Benchmark("processbench/math.jsonl", 1000, "processbench", "ProcessBench, MATH"),
    "processbench_olympiadbench": Benchmark("processbench/olympiadbench.jsonl", 1000, "processbench",
                                            "ProcessBench, OlympiadBench"),
    "processbench_omnimath": Benchmark("processbench/omnimath.jsonl", 1000, "processbench", "ProcessBench, Omni-MATH"),
}


def resolve_data_dir(arg: Path | None) -> Path:
    """`--data-dir`, else `$THINKRL_DATA_DIR`, else `data/` (relative to the working directory)."""
    if arg is not None:
        return Path(arg)
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else Path("data")


def _checked(df: pl.DataFrame | list[dict], where: str, id_where: str) -> pl.DataFrame:
    """Cast and validate against the problems schema; problem_id must be unique."""
    if isinstance(df, list):
        df = pl.DataFrame(df, schema=PROBLEMS.polars_schema)
    df = validate_frame(to_frame(df, PROBLEMS), PROBLEMS, where)
    dup = df.filter(pl.col("problem_id").is_duplicated())["problem_id"]
    if dup.len():
        raise ThinkrlError(f"{where}: {dup.len()} rows share a problem_id ({id_where}), e.g. '{dup[0]}'; "
                           "ids must be unique")
    return df


def _meta(d: dict) -> str:
    return json.dumps(d, ensure_ascii=False, default=str)


def _limit(df: pl.DataFrame, limit: int | None) -> pl.DataFrame:
    if limit is None:
        return df
    if limit < 1:
        raise ThinkrlError(f"limit must be at least 1, got {limit}")
    return df.head(limit)


def benchmark_spec(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ThinkrlError(f"unknown benchmark '{name}' (known: {', '.join(BENCHMARKS)})")
    return BENCHMARKS[name]


def benchmark_path(name: str, data_dir: Path) -> Path:
    """The benchmark's file in `data_dir`; a one-line error saying where it was looked for if it is not there."""
    spec = benchmark_spec(name)
    path = Path(data_dir) / spec.path
    if not path.is_file():
        raise ThinkrlError(f"{path}: no such file (benchmark '{name}' expects {spec.path} in the data directory "
                           f"{data_dir}; set --data-dir or ${DATA_ENV})")
    return path


def load_benchmark(name: str, data_dir: Path, limit: int | None = None) -> pl.DataFrame:
    """A known benchmark as a problems frame; the full file's row count is checked, then `limit` keeps the first."""
    spec = benchmark_spec(name)
    path = benchmark_path(name, data_dir)
    records = read_records(path)
    if len(records) != spec.rows:
        raise ThinkrlError(f"{path}: {len(records)} rows, expected {spec.rows} for benchmark '{name}' "
                           "(truncated or wrong file?)")
    fn = MAPPINGS[spec.mapping]
    rows = []
    for idx, (where, rec) in enumerate(records):
        try:
            m = fn(rec, idx)
        except _BadRow as e:
            raise ThinkrlError(f"{path}: {where}: {e}") from None
        rows.append({"problem_id": f"{name}-{m.key}", "source": name, "question": m.question,
                     "answer": m.answer, "meta": _meta(m.meta)})
    return _limit(_checked(rows, str(path), f"benchmark '{name}'"), limit)


def load_file(path: Path, question_col: str = "question", answer_col: str | None = "answer",
              id_col: str | None = None, source: str | None = None, limit: int | None = None) -> pl.DataFrame:
    """Any JSONL / JSON array / Parquet file as a problems frame, by column mapping.

    answer_col None means the set has no gold answer (answer ""). problem_id is the `id_col` value as given
    (it must be unique), else `{source}-{index:04d}`; source defaults to the file name without suffix.
    All other fields go to meta.
    """
    path = Path(path)
    records = read_records(path)
    source = source or path.stem
    cols = [c for c in (question_col, answer_col, id_col) if c is not None]
    for col in cols:
        missing = next(((w, r) for w, r in records if col not in r), None)
        if missing is not None:
            have = ", ".join(map(str, missing[1])) or "none"
            raise ThinkrlError(f"{path}: {missing[0]}: no column '{col}' (available: {have})")
    rows = []
    for idx, (where, rec) in enumerate(records):
        try:
            question = _question(rec, question_col)
            answer = _answer(rec, answer_col) if answer_col is not None else ""
            pid = _ident(rec, id_col) if id_col is not None else f"{source}-{idx:04d}"
        except _BadRow as e:
            raise ThinkrlError(f"{path}: {where}: {e}") from None
        rows.append({"problem_id": pid, "source": source, "question": question, "answer": answer,
                     "meta": _meta(_rest(rec, *cols))})
    return _limit(_checked(rows, str(path), f"column '{id_col}'" if id_col else "row index"), limit)


def count_rows(path: Path) -> int | None:
    """Rows of a file without parsing it (non-blank lines of JSONL; Parquet metadata); None if unreadable."""
    try:
        if path.suffix.lower() == ".parquet":
            return pl.scan_parquet(path).select(pl.len()).collect().item()
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    except Exception:  # a damaged file only shows up as "rows unknown" in a listing
        return None


def list_benchmarks(data_dir: Path) -> list[dict]:
    """Each known benchmark: name, path, relpath (in data_dir), found, rows (None when missing or unreadable),
    expected_rows, ok (rows == expected_rows), doc."""
    sets = []
    for name, spec in BENCHMARKS.items():
        path = Path(data_dir) / spec.path
        found = path.is_file()
        rows = count_rows(path) if found else None
        sets.append({"name": name, "path": str(path), "relpath": spec.path, "found": found, "rows": rows,
                     "expected_rows": spec.rows, "ok": rows == spec.rows, "doc": spec.doc})
    return sets


# --------------------------------------------------------------------------------------------- any set
ARITH_EVAL_SEED = 1_000_003  # held-out ArithChain problems for `eval --bench arith` (training sets use other seeds)


def arith_task(n: int = 200, seed: int = ARITH_EVAL_SEED, min_ops: int | None = None,
               max_ops: int | None = None) -> list[dict]:
    """ArithChain problems (thinkrl.tasks.arith) as problems rows; the default is the held-out eval set.
    min_ops/max_ops change the chain lengths (default 2-6): e.g. 1-2 operations for a model that solves
    little else."""
    from dataclasses import replace

    from thinkrl.tasks.arith import ArithConfig, generate_problems

    lengths = {k: v for k, v in (("min_ops", min_ops), ("max_ops", max_ops)) if v is not None}
    config = replace(ArithConfig(), **lengths)
    if config.min_ops < 1 or config.max_ops < config.min_ops:
        raise ThinkrlError(f"arith: expected 1 <= min_ops <= max_ops, got {config.min_ops} and {config.max_ops}")
    return [{"problem_id": p.problem_id, "source": "arith", "question": p.question, "answer": str(p.answer),
             "meta": json.dumps({"start": p.start, "ops": [list(o) for o in p.ops], "seed": seed})}
            for p in generate_problems(n, seed, config)]


TASKS: dict[str, Callable[..., pl.DataFrame | list[dict]]] = {"arith": arith_task}
"""Synthetic task generators by name: called with the task's keyword options (n, seed), they return
problems rows. They read no file, so a prepared artifact records no input."""


@dataclass(frozen=True)
class ProblemSet:
    """What `thinkrl data prepare NAME|FILE` refers to."""

    name: str
    kind: str                     # "task" | "benchmark" | "file" (key of LOADERS)
    path: Path | None             # the input file; None for generated tasks
    data_dir: Path | None = None  # where a benchmark was found


def resolve_set(name: str, data_dir: Path) -> ProblemSet:
    """A task name, then a benchmark name, then a file path; the file must exist."""
    if name in TASKS:
        return ProblemSet(name, "task", None)
    if name in BENCHMARKS:
        return ProblemSet(name, "benchmark", benchmark_path(name, data_dir), Path(data_dir))
    path = Path(name)
    if path.exists() or path.suffix.lower() in READERS:
        _check_file(path)
        return ProblemSet(name, "file", path)
    tasks = f"; tasks: {', '.join(TASKS)}" if TASKS else ""
    raise ThinkrlError(f"unknown problem set '{name}' (benchmarks: {', '.join(BENCHMARKS)}{tasks}; "
                       f"or a {'/'.join(READERS)} file)")


def _load_task(ps: ProblemSet, limit: int | None, **options: Any) -> pl.DataFrame:
    if limit is not None and options.get("n") is None:
        options["n"] = limit  # a generated set has as many problems as asked for (`--limit 500`: 500)
    return _limit(_checked(TASKS[ps.name](**options), f"task '{ps.name}'", "generator"), limit)


def _load_benchmark(ps: ProblemSet, limit: int | None, **options: Any) -> pl.DataFrame:
    return load_benchmark(ps.name, ps.data_dir, limit)


def _load_file(ps: ProblemSet, limit: int | None, **options: Any) -> pl.DataFrame:
    return load_file(ps.path, limit=limit, **options)


LOADERS: dict[str, Callable[..., pl.DataFrame]] = {
    "task": _load_task, "benchmark": _load_benchmark, "file": _load_file,
}

FILE_OPTIONS = ("question_col", "answer_col", "id_col", "source")
TASK_OPTIONS = ("n", "seed", "min_ops", "max_ops")


def load_problems(ps: ProblemSet, limit: int | None = None, **options: Any) -> pl.DataFrame:
    """Load a resolved set. Column-mapping options (question_col, answer_col, id_col, source) apply to a file
    only; a task gets its own keyword options. None-valued options are dropped (defaults apply)."""
    options = {k: v for k, v in options.items() if v is not None}
    if ps.kind == "benchmark" and options:
        raise ThinkrlError(f"'{ps.name}' is a known benchmark with a fixed column mapping; "
                           f"{', '.join('--' + k.replace('_', '-') for k in options)} apply to a FILE only")
    if ps.kind != "task" and set(options) & set(TASK_OPTIONS):
        bad = ", ".join("--" + k for k in options if k in TASK_OPTIONS)
        raise ThinkrlError(f"'{ps.name}' is not a generated task; {bad} apply to a task (e.g. arith) only")
    if ps.kind == "task" and set(options) & set(FILE_OPTIONS):
        bad = ", ".join("--" + k.replace("_", "-") for k in options if k in FILE_OPTIONS)
        raise ThinkrlError(f"'{ps.name}' is a generated task; {bad} apply to a FILE only")
    return LOADERS[ps.kind](ps, limit, **options)


def problems_sha256(df: pl.DataFrame) -> str:
    """What a set of problems is, for skip keys: the sha256 of its ids, questions and answers."""
    return sha256_json(df.select("problem_id", "question", "answer").rows())


def named_problems(name: str, data_dir: Path, limit: int | None = None, **options: Any) -> pl.DataFrame:
    """A task, benchmark or file by name, loaded in one call (`resolve_set` + `load_problems`)."""
    return load_problems(resolve_set(name, data_dir), limit=limit, **options)


def problem_set(name: str, data_dir: Path, limit: int | None = None) -> pl.DataFrame:
    """`named_problems`, or a problems artifact directory (thinkrl data prepare), its first `limit` rows."""
    from thinkrl.artifacts import MANIFEST, read_table

    if (Path(name) / MANIFEST).is_file():
        df = read_table(name, "problems")
        return df if limit is None else df.head(limit)
    return named_problems(name, data_dir, limit=limit)


def set_name(name: str) -> str:
    """How a problem set is named in results (the eval `benchmark` column): an artifact directory's name, a
    file's stem, else the name itself."""
    from thinkrl.artifacts import MANIFEST

    p = Path(name)
    if (p / MANIFEST).is_file():
        return p.name
    return p.stem if p.suffix else name


def problem_sets(names: str, data_dir: Path, limit: int | None = None) -> dict[str, pl.DataFrame]:
    """Comma-separated problem sets (tasks, benchmarks, files, artifact directories) by result name, the
    first `limit` problems of each (`thinkrl eval --bench`, `thinkrl run`'s eval_bench)."""
    sets = {set_name(b.strip()): problem_set(b.strip(), data_dir, limit) for b in names.split(",") if b.strip()}
    if not sets:
        raise ThinkrlError(f"no problem sets named in {names!r}")
    return sets


@dataclass(frozen=True)
class PrepareConfig:
    """Every setting of `thinkrl data prepare` besides the set's name: the row limit and the options of a
    file (column mapping) or of a generated task."""

    limit: int | None = setting(None, "keep only the first N problems", ge=1)
    question_col: str | None = setting(None, "FILE only: column holding the question (default: question)")
    answer_col: str | None = setting(None, "FILE only: column holding the gold answer (default: answer)")
    id_col: str | None = setting(None, "FILE only: column of unique problem ids (default: {source}-{row index})")
    source: str | None = setting(None, "FILE only: source name stored with each problem (default: the file name)")
    n: int | None = setting(None, "TASK only: how many problems to generate", ge=1)
    seed: int | None = setting(None, "TASK only: generator seed", ge=0)
    min_ops: int | None = setting(None, "TASK arith only: fewest operations per chain (default 2)", ge=1)
    max_ops: int | None = setting(None, "TASK arith only: most operations per chain (default 6)", ge=1)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.min_ops is not None and self.max_ops is not None and self.min_ops > self.max_ops:
            raise ThinkrlError(f"--min-ops {self.min_ops} is more than --max-ops {self.max_ops}")

    def options(self) -> dict[str, Any]:
        """The loader options (column mapping, task options)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "limit"}


def run_prepare_stage(name: str, out: Path, cfg: PrepareConfig, data_dir: Path, force: bool = False):
    """The prepare stage (`thinkrl data prepare`): key -> skip -> read and check everything -> the problems
    artifact. Nothing is written before the whole input has been read and checked."""
    from thinkrl.artifacts import ArtifactWriter, StageResult, finished

    ps = resolve_set(name, data_dir)
    config = {"set": name, "kind": ps.kind, "limit": cfg.limit, **cfg.options(),
              "data_dir": str(Path(data_dir).resolve()) if ps.kind == "benchmark" else None}
    if out.exists() and not out.is_dir():
        raise ThinkrlError(f"{out}: is a file; --out must be a directory")
    writer = ArtifactWriter(out, stage="prepare", config=config, inputs={"problems": ps.path} if ps.path else {})
    if not force and writer.up_to_date():
        return finished(writer)
    df = load_problems(ps, limit=cfg.limit, **cfg.options())  # reads and checks everything before a byte is written
    writer.set_table("problems", df)
    writer.finish(metrics={"rows": df.height, "source": ",".join(sorted(df["source"].unique().to_list()))})
    return StageResult(out, False, {"rows": df.height, "kind": ps.kind})

