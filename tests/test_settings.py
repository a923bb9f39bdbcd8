"""Tests for thinkrl.settings and the options generated from it: every setting declared once.

Each TOML key of `thinkrl run` maps to one dataclass field, each stage option to the same field, with one
default and one help text wherever it appears.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import click
import pytest
import typer

from stages.cli import app
from thinkrl.errors import ThinkrlError
from thinkrl.evaluate import EvalConfig
from thinkrl.experiment import ExperimentConfig
from thinkrl.judge.judging import JudgeConfig
from thinkrl.judge_eval import JudgeEvalConfig
from thinkrl.problems import DATA_DIR_HELP, PrepareConfig
from thinkrl.sampling import SampleConfig
from thinkrl.segment import SegmentConfig
from thinkrl.settings import (
    aliases_markdown,
    aliases_of,
    coerce,
    flag_of,
    help_of,
    project,
    root,
    same_as,
    setting,
)
from thinkrl.tracking import TrackingConfig
from thinkrl.trainer import TrainConfig
from thinkrl.warmstart import WarmstartConfig


@dataclass(frozen=True)
class _Base:
    a: int = setting(3, "the a")
    b: str = setting("x", "the b")


@dataclass(frozen=True)
class _Mid:
    a: int = same_as(_Base, "a")
    c: float = setting(0.5, "the c")


@dataclass(frozen=True)
class _Top:
    a2: int = same_as(_Mid, "a")   # a link to a link
    c: float = same_as(_Mid, "c")
    own: int = setting(7, "the own")


def test_same_as_takes_the_declarations_default_and_help_and_root_follows_links():
    assert _Top().a2 == 3 and help_of(_Top, "a2") == "the a"
    assert root(_Top, "a2") == (_Base, "a") and root(_Top, "own") == (_Top, "own")
    with pytest.raises(TypeError, match="no setting"):
        same_as(_Base, "zz")


def test_project_maps_by_declaration_not_by_name():
    top = _Top(a2=11, c=0.25, own=1)
    assert project(top, _Base) == _Base(a=11, b="x")  # a2 is _Base.a; b keeps its default
    assert project(top, _Mid, c=0.75) == _Mid(a=11, c=0.75)  # fixed values win
    with pytest.raises(TypeError, match="no settings"):
        project(top, _Base, nope=1)


def test_coerce_checks_types_and_names_the_key():
    assert coerce(_Mid, "c", 1, "f.toml") == 1.0 and isinstance(coerce(_Mid, "c", 1, "f.toml"), float)
    with pytest.raises(ThinkrlError, match="f.toml: `a` must be int, got str"):
        coerce(_Mid, "a", "3", "f.toml")
    with pytest.raises(ThinkrlError, match="unknown setting `zz`"):
        coerce(_Mid, "zz", 1, "f.toml")
    with pytest.raises(ThinkrlError, match="must be int, got bool"):
        coerce(_Mid, "a", True, "x")


STAGES = [SampleConfig, JudgeConfig, SegmentConfig, TrainConfig, EvalConfig, WarmstartConfig, TrackingConfig]


def test_every_experiment_key_is_one_setting_of_its_own_or_of_one_stage():
    roots = {}
    for f in fields(ExperimentConfig):
        cls, name = root(ExperimentConfig, f.name)
        assert cls is ExperimentConfig or cls in STAGES, f.name
        assert (cls, name) not in roots, f"{f.name} and {roots.get((cls, name))} are the same setting"
        roots[(cls, name)] = f.name
        declared = next(g for g in fields(cls) if g.name == name)
        assert f.default == declared.default, f.name  # one default per setting
        assert help_of(ExperimentConfig, f.name) == declared.metadata["help"]
    # the stage fields that are settings of another stage point at it, with its default
    assert root(EvalConfig, "max_tokens") == (SampleConfig, "max_tokens")
    assert EvalConfig().max_tokens == SampleConfig().max_tokens == ExperimentConfig().max_tokens


def _command(*path: str) -> click.Command:
    cmd = typer.main.get_command(app)
    for p in path:
        cmd = cmd.commands[p]
    return cmd


INPUTS = {"policy", "problems", "out", "rollouts", "judgments", "thoughts", "tokenizer", "bench",
          "force", "help", "experiment", "name", "runs_dir", "out_dir"}
COMMANDS = {("sample",): SampleConfig, ("judge",): JudgeConfig, ("segment",): SegmentConfig,
            ("train",): (TrainConfig, TrackingConfig), ("eval",): EvalConfig, ("model", "warmstart"): WarmstartConfig,
            ("judge-eval",): JudgeEvalConfig, ("data", "prepare"): PrepareConfig, ("run",): ExperimentConfig}


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_every_stage_option_is_a_field_of_its_settings_with_the_fields_default_and_help(path):
    classes = _classes(path)
    owner = {f.name: c for c in classes for f in fields(c)}
    options = {p.name: p for p in _command(*path).params}
    for name, p in options.items():
        cls = owner.get(name, classes[0])
        if name in INPUTS:
            continue
        if name == "data_dir" and cls is not ExperimentConfig:
            assert p.help == DATA_DIR_HELP  # the one declaration of the data directory's help
            continue
        assert name in owner, f"thinkrl {' '.join(path)} --{name}: declared in the command, not in {cls.__name__}"
        decl_cls, decl = root(cls, name)
        assert p.help.startswith(help_of(decl_cls, decl)), name
        if cls is not ExperimentConfig:  # (thinkrl run's options are unset by default: the file decides)
            f = next(f for f in fields(cls) if f.name == name)
            given_as_text = f.metadata.get("parse") or f.default == ()  # k/n text, repeatable: None = default
            want = None if given_as_text else f.default
            got = tuple(p.default) if isinstance(p.default, list) else p.default
            assert got == want, name
    missing = {f.name for c in classes for f in fields(c) if f.metadata.get("option", True)} - set(options)
    assert not missing, f"{', '.join(c.__name__ for c in classes)} fields without an option: {missing}"


def test_run_options_are_unset_by_default_so_the_file_decides(tmp_path):
    assert all(p.default in (None, False) or p.name in INPUTS for p in _command("run").params
               if p.name not in INPUTS)


def test_one_setting_has_one_default_across_commands():
    """`--max-tokens` of sample and eval, and `max_tokens` of thinkrl run, are one setting (it used to be
    256, 1024 and 160)."""
    defaults = {" ".join(path): {p.name: p.default for p in _command(*path).params}
                for path in [("sample",), ("eval",)]}
    assert defaults["sample"]["max_tokens"] == defaults["eval"]["max_tokens"] == ExperimentConfig().max_tokens
    assert defaults["sample"]["part_size"] == defaults["eval"]["part_size"] == ExperimentConfig().part_size
    assert ExperimentConfig().save_every == TrainConfig().save_every
    assert ExperimentConfig().eval_k == EvalConfig().k


def test_experiment_projects_each_stage_its_settings():
    cfg = ExperimentConfig(policy="p", max_tokens=77, part_size=3, eval_k=5, eval_temperature=0.9,
                           judge_max_tokens=12, judge_part_size=9, lr=3e-5, alpha=0.25, seed=4, scheme="outcome")
    s = cfg.sample_config(2)
    assert (s.max_tokens, s.part_size, s.seed, s.round, s.temperature) == (77, 3, 4, 2, 1.0)
    e = cfg.eval_config()
    assert (e.k, e.temperature, e.max_tokens, e.part_size, e.seed) == (5, 0.9, 77, 3, 4)
    j = cfg.judge_config()
    assert (j.max_tokens, j.part_size, j.max_unknown) == (12, 9, 1.0)  # outcome: no judge share stops it
    assert ExperimentConfig(policy="p").judge_config().max_unknown == JudgeConfig().max_unknown
    t = cfg.train_config(1)
    assert t.lr == 3e-5 and t.seed != TrainConfig().seed and cfg.segment_config().alpha == 0.25


def test_judge_temperature_and_extra_body_from_options_and_toml_tables(tmp_path):
    """The judge's temperature and extra_body are one setting each on thinkrl judge, judge-eval and run; an
    experiment file gives extra_body as a TOML table (or as its JSON text), and the saved config.toml reads back."""
    for cls in (JudgeEvalConfig, ExperimentConfig):
        prefix = "judge_" if cls is ExperimentConfig else ""
        assert root(cls, f"{prefix}temperature") == (JudgeConfig, "temperature")
        assert root(cls, f"{prefix}extra_body") == (JudgeConfig, "extra_body")
    f = tmp_path / "e.toml"
    f.write_text('policy = "p"\njudge = "openai:http://h"\njudge_model = "m"\njudge_temperature = 0.6\n'
                 "judge_extra_body = {chat_template_kwargs = {enable_thinking = false}, top_p = 0.95}\n")
    cfg = ExperimentConfig.load(f)
    j = cfg.judge_config()
    assert j.temperature == 0.6 and json.loads(j.extra_body) == {"chat_template_kwargs": {"enable_thinking": False},
                                                                 "top_p": 0.95}
    (tmp_path / "saved.toml").write_text(cfg.to_toml())
    assert ExperimentConfig.load(tmp_path / "saved.toml") == cfg
    f.write_text('policy = "p"\n[judge_extra_body]\ntop_k = 20\n')             # a table after the flat keys
    assert json.loads(ExperimentConfig.load(f).judge_extra_body) == {"top_k": 20}
    over = ExperimentConfig.load(f, overrides={"judge_extra_body": '{"top_k": 5}'})
    assert json.loads(over.judge_config().extra_body) == {"top_k": 5}
    with pytest.raises(ThinkrlError, match="--judge-extra-body must be a JSON object"):
        ExperimentConfig.load(None, overrides={"policy": "p", "judge_extra_body": "top_k=5"})
    f.write_text('policy = "p"\n[judge_temperature]\nx = 1\n')
    with pytest.raises(ThinkrlError, match=r"table \[judge_temperature\] is not allowed"):
        ExperimentConfig.load(f)


def test_a_bad_stage_setting_fails_when_the_experiment_is_made():
    with pytest.raises(ThinkrlError, match="experiment: .*needs judge_model"):
        ExperimentConfig(policy="p", judge="openai:http://h")
    with pytest.raises(ThinkrlError, match="experiment: .*engine"):
        ExperimentConfig(policy="p", engine="nope")


def test_review_fixes_dtype_names_memory_share_and_training_memory_keys(tmp_path):
    assert SampleConfig(dtype="bf16").dtype == "bfloat16" == EvalConfig(dtype="bf16").dtype  # one key per dtype
    with pytest.raises(ThinkrlError, match="--gpu-memory-utilization must be in \\(0, 1\\], got 0"):
        SampleConfig(engine="vllm", gpu_memory_utilization=0.0)
    cfg = ExperimentConfig(policy="p", train_dtype="bfloat16", gradient_checkpointing=True, logprob_chunk=256)
    t = cfg.train_config(0)
    assert (t.dtype, t.gradient_checkpointing, t.logprob_chunk) == ("bfloat16", True, 256)
    assert cfg.sample_config(0).dtype == "auto"  # `dtype` is the generation dtype, `train_dtype` the trainer's


def test_the_runs_generation_dtype_is_resolved_once_from_the_start_policy(tmp_path):
    """vLLM `auto` follows the start checkpoint (fp16 here) for the whole run, since its one engine keeps it;
    a trained policy saved in fp32 would otherwise resolve to bf16 and record what the engine does not run."""
    from thinkrl.rounds import _generation_dtype_fixed

    (tmp_path / "config.json").write_text('{"dtype": "float16"}')
    cfg = ExperimentConfig(policy=str(tmp_path), engine="vllm")
    assert _generation_dtype_fixed(cfg).dtype == "float16"
    assert _generation_dtype_fixed(ExperimentConfig(policy=str(tmp_path), engine="vllm", dtype="bfloat16")).dtype \
        == "bfloat16"


def test_judge_eval_key_carries_the_judges_version(tmp_path):
    """An upgraded rule judge re-runs judge-eval (its key used to hold only the judge's name)."""
    from thinkrl.judge.rule import RuleJudge
    from thinkrl.judge_eval import judge_eval_key, run_judge_eval_stage

    key = judge_eval_key(JudgeEvalConfig(processbench="gsm8k,math", limit=5))
    assert key["judge_version"] == RuleJudge.version and key["processbench"] == ["gsm8k", "math"]
    assert "prompt_version" in judge_eval_key(JudgeEvalConfig(judge="hf:some/dir"))
    with pytest.raises(ThinkrlError, match="give --rollouts"):
        run_judge_eval_stage(tmp_path / "je", JudgeEvalConfig(), None, tmp_path)


# --------------------------------------------------------------------------------------------- bounds
SETTINGS = [*STAGES, JudgeEvalConfig, PrepareConfig, ExperimentConfig]
UNBOUNDED = {(SampleConfig, "round")}  # the eval stage records round -1 (not a training round)


def _numeric(cls: type, name: str) -> bool:
    from thinkrl.settings import base_type, field_type

    t = base_type(field_type(cls, name))
    return t in (int, float) or t == tuple[float, float]


def _outside(bounds) -> list:
    """A value just outside each declared bound."""
    return [{"ge": v - 1, "gt": v, "le": v + 1, "lt": v}[op] for op, v in bounds]


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_every_number_setting_declares_its_bounds_and_each_class_enforces_them(cls):
    """A count >= 1, a probability in [0, 1], a rate > 0, ...: declared once with the setting, checked by the
    class (every stage and thinkrl run) and by `coerce` (TOML files, run options), naming the option."""
    from thinkrl.settings import bounds_of, coerce, flag_of

    for f in fields(cls):
        if not _numeric(cls, f.name):
            continue
        bounds = bounds_of(cls, f.name)
        assert bounds or (cls, f.name) in UNBOUNDED or root(cls, f.name) in UNBOUNDED, \
            f"{cls.__name__}.{f.name}: a number setting with no bounds (setting(..., ge=/gt=/le=/lt=))"
        for bad in _outside(bounds):
            value = (0.9, bad) if f.name == "betas" else bad
            if isinstance(f.default, float) or f.name == "betas":
                value = tuple(map(float, value)) if f.name == "betas" else float(value)
            name = f.metadata.get("short") or flag_of(cls, f.name)
            with pytest.raises(ThinkrlError, match=f"^{name} must be "):
                cls(**{f.name: value})
            if f.name != "betas":
                with pytest.raises(ThinkrlError, match=f"^x.toml: `{f.name}` must be "):
                    coerce(cls, f.name, value, "x.toml")
                with pytest.raises(ThinkrlError, match=f"^{flag_of(cls, f.name)} must be "):
                    coerce(cls, f.name, value, "option")
        if isinstance(f.default, float):
            with pytest.raises(ThinkrlError, match="must be a finite number, got nan"):
                cls(**{f.name: float("nan")})


def test_bounds_read_as_intervals_in_messages_and_help():
    from thinkrl.settings import bounds_text

    assert bounds_text((("gt", 0), ("le", 1))) == "in (0, 1]" and bounds_text((("ge", 1),)) == ">= 1"
    assert bounds_text((("ge", 0), ("lt", 1))) == "in [0, 1)"
    top_p = next(p for p in _command("sample").params if p.name == "top_p")
    assert top_p.help.endswith("; in (0, 1]")
    with pytest.raises(ThinkrlError, match=r"^--max-tokens must be >= 1, got 0$"):
        SampleConfig(max_tokens=0)


# --------------------------------------------------------------------------------------------- TRL's names
TRL_VALUES = {"num_generations": ("4", 4), "max_completion_length": ("64", 64), "epsilon": ("0.1", 0.1),
              "epsilon_high": ("0.28", 0.28), "loss_type": ("dr_grpo", "dr_grpo"),
              "num_iterations": ("2", 2), "learning_rate": ("3e-5", 3e-5), "lr_scheduler_type": ("cosine", "cosine"),
              "max_grad_norm": ("0.5", 0.5), "save_steps": ("7", 7)}


def _classes(path: tuple[str, ...]) -> tuple[type, ...]:
    return COMMANDS[path] if isinstance(COMMANDS[path], tuple) else (COMMANDS[path],)


def _parsed(path: tuple[str, ...], args: list[str]) -> dict:
    cmd = _command(*path)
    return cmd.make_context(" ".join(path), args, resilient_parsing=True).params


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_trls_names_are_options_that_set_thinkrls_setting(path):
    seen = 0
    for cls, f in ((c, f) for c in _classes(path) for f in fields(c)):
        for alias in aliases_of(cls, f.name):
            text, value = TRL_VALUES[alias]
            by_alias = _parsed(path, [f"--{alias.replace('_', '-')}", text])
            by_name = _parsed(path, [flag_of(cls, f.name), text])
            assert by_alias[f.name] == by_name[f.name] == value, (path, alias)
            seen += 1
    assert seen == {("sample",): 2, ("eval",): 1, ("train",): 8, ("model", "warmstart"): 1,
                    ("run",): 10}.get(path, 0)


def test_trls_names_are_toml_keys_and_a_setting_given_twice_is_refused(tmp_path):
    trl, ours = tmp_path / "trl.toml", tmp_path / "ours.toml"
    trl.write_text('policy = "p"\nnum_generations = 4\nlearning_rate = 3e-5\nloss_type = "dr_grpo"\n'
                   'max_completion_length = 64\nnum_iterations = 2\n')
    ours.write_text('policy = "p"\nn = 4\nlr = 3e-5\naggregation = "dr_grpo"\nmax_tokens = 64\nepochs = 2\n')
    assert ExperimentConfig.load(trl) == ExperimentConfig.load(ours)
    assert ExperimentConfig.load(trl).n == 4 and ExperimentConfig.load(trl).lr == 3e-5
    both = tmp_path / "both.toml"
    both.write_text('policy = "p"\nn = 4\nnum_generations = 8\n')
    with pytest.raises(ThinkrlError, match="`n` is given twice .as `n` and as `num_generations`"):
        ExperimentConfig.load(both)


def test_an_alias_is_not_carried_to_a_setting_of_another_name():
    """thinkrl run's `eval_k` is eval's `k`, and `judge_max_tokens` the judge's `max_tokens`: TRL's names of the
    sampler's `max_tokens` / `n` are not theirs."""
    assert aliases_of(ExperimentConfig, "n") == ("num_generations",)
    assert aliases_of(ExperimentConfig, "eval_k") == () and aliases_of(ExperimentConfig, "judge_max_tokens") == ()
    assert aliases_of(EvalConfig, "max_tokens") == ("max_completion_length",)


def test_the_readmes_table_of_trls_names_is_the_settings_aliases():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = aliases_markdown({" ".join(p): _classes(p)[0] for p in COMMANDS})
    start = readme.index("<!-- trl-names")
    body = readme[readme.index("\n", start) + 1:readme.index("<!-- /trl-names -->")]
    assert body == table, "README's TRL table is stale: paste aliases_markdown(...) between the markers"


def test_run_help_shows_each_settings_default():
    """thinkrl run's options are None by default (the file decides), so typer showed no default at all."""
    helps = {p.name: p.help for p in _command("run").params}
    assert "(default 8)" in helps["n"] and "(default 0.0001)" in helps["lr"] and "(default 16)" in helps["eval_k"]
    assert "(default" not in helps["judge_model"]  # None: nothing to show
