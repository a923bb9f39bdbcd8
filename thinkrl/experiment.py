"""Experiment settings: what one `thinkrl run` does, as flat TOML keys and CLI options.

    cfg = ExperimentConfig.load("data/experiments/arith-grpo-vs-tp.toml", overrides={"lr": 2e-4})
    cfg.train_config(round_=0)                    # TrainConfig of round 0 (the schedule spans every round)
    python -m thinkrl.experiment                  # the reference of every key (data/experiments/README.md)

`ExperimentConfig` composes the stages' settings instead of copying them: apart from the few that only an
experiment has (policy, rounds, seed, problems, prompts_per_round, the eval schedule, sets and seed, data_dir,
threads), each of its fields is `same_as` a field of SampleConfig, JudgeConfig, SegmentConfig, TrainConfig,
EvalConfig or TrackingConfig (thinkrl.settings), so it has that setting's one default and help text, and `project` hands it to
the stage. A key's name is the stage field's, prefixed where two stages share a name (`judge_max_tokens` is
JudgeConfig.max_tokens, `eval_k` EvalConfig.k). The generation settings max_tokens, template, engine, dtype
part_size, device and the vLLM options apply to the training rollouts and the held-out eval alike (one engine
serves both).

A TOML experiment file holds flat `key = value` pairs, one per field (no tables, except as the value of
`judge_extra_body`; an unknown key is an error naming it); the CLI takes every field as an option too (`--lr 2e-4`), and options win over the file, which
wins over the defaults. The resolved settings are saved as runs/NAME/config.toml. The round loop that runs
them is thinkrl/rounds.py.

Settings an experiment derives rather than takes: the seed of every stage (sampling uses `seed`, eval `eval_seed`
or else `seed`, the trainer a hash of (seed, round)), the round of the behaviour policy, the trainer's continuation and schedule
length (one policy trains across the rounds), the KL reference (the start policy), and `judge_max_unknown`
under the outcome scheme (its labels are unused, so no judge share stops it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from thinkrl.errors import ThinkrlError
from thinkrl.evaluate import EvalConfig
from thinkrl.judge.judging import JudgeConfig
from thinkrl.problems import DATA_DIR_HELP
from thinkrl.sampling import GenerationSettings, SampleConfig
from thinkrl.segment import SegmentConfig
from thinkrl.settings import (
    aliases_of,
    check_settings,
    coerce,
    field_type,
    help_of,
    project,
    read_toml,
    root,
    same_as,
    setting,
    toml_value,
    type_name,
)
from thinkrl.tracking import TrackingConfig
from thinkrl.training import TrainConfig


@dataclass(frozen=True)
class ExperimentConfig(GenerationSettings):
    """Every setting of a `thinkrl run` experiment (flat keys of the TOML file, options of the CLI); the
    generation settings (GenerationSettings, first) serve its training rollouts and its evals alike."""

    policy: str = setting("", "start policy: a Hugging Face causal-LM directory (required)")
    rounds: int = setting(4, "rounds of sample -> judge -> segment -> train", ge=1)
    seed: int = setting(0, "base seed: sampling, eval, training order and arith problems derive from (seed, round)",
                         ge=0)
    # problems and sampling
    problems: str = setting("arith", "training problems: `arith` (fresh ArithChain problems each round), a "
                                     "benchmark name, a problems file or a problems artifact directory (cycled)")
    prompts_per_round: int = setting(40, "problems sampled per round (the round's optimizer steps: this / "
                                         "prompts_per_step x epochs)", ge=1)
    n: int = same_as(SampleConfig, "n")
    temperature: float = same_as(SampleConfig, "temperature")
    top_p: float = same_as(SampleConfig, "top_p")
    # judge and advantages
    judge: str = same_as(JudgeConfig, "judge")
    judge_model: str | None = same_as(JudgeConfig, "judge_model")
    judge_prompt: str = same_as(JudgeConfig, "prompt")
    judge_max_tokens: int = same_as(JudgeConfig, "max_tokens")
    judge_temperature: float = same_as(JudgeConfig, "temperature")
    judge_extra_body: str | None = same_as(JudgeConfig, "extra_body")
    judge_concurrency: int = same_as(JudgeConfig, "concurrency")
    judge_timeout: float = same_as(JudgeConfig, "timeout_s")
    judge_retries: int = same_as(JudgeConfig, "retries")
    judge_parse_retries: int = same_as(JudgeConfig, "parse_retries")
    judge_allow_failed: bool = same_as(JudgeConfig, "allow_failed")
    judge_api_key_env: str = same_as(JudgeConfig, "api_key_env")
    judge_part_size: int = same_as(JudgeConfig, "part_size")
    judge_max_unknown: float = same_as(JudgeConfig, "max_unknown")
    splitter: str = same_as(JudgeConfig, "splitter")
    scheme: str = same_as(SegmentConfig, "scheme")
    alpha: float = same_as(SegmentConfig, "alpha")
    # training
    recompute_logprobs: bool = same_as(TrainConfig, "recompute_logprobs")
    lr: float = same_as(TrainConfig, "lr")
    prompts_per_step: int = same_as(TrainConfig, "prompts_per_step")
    epochs: int = same_as(TrainConfig, "epochs")
    warmup_steps: int = same_as(TrainConfig, "warmup_steps")
    schedule: str = same_as(TrainConfig, "schedule")
    weight_decay: float = same_as(TrainConfig, "weight_decay")
    grad_clip: float = same_as(TrainConfig, "grad_clip")
    micro_batch_tokens: int = same_as(TrainConfig, "micro_batch_tokens")
    eps_low: float = same_as(TrainConfig, "eps_low")
    eps_high: float = same_as(TrainConfig, "eps_high")
    beta: float = same_as(TrainConfig, "beta")
    aggregation: str = same_as(TrainConfig, "aggregation")
    save_every: int = same_as(TrainConfig, "save_every")
    train_dtype: str = same_as(TrainConfig, "dtype")
    gradient_checkpointing: bool = same_as(TrainConfig, "gradient_checkpointing")
    logprob_chunk: int = same_as(TrainConfig, "logprob_chunk")
    lora_r: int = same_as(TrainConfig, "lora_r")
    lora_alpha: float | None = same_as(TrainConfig, "lora_alpha")
    lora_targets: str = same_as(TrainConfig, "lora_targets")
    strategy: str = same_as(TrainConfig, "strategy")
    # eval
    eval_every: int = setting(1, "held-out eval after every N-th round and after the last (0 = no eval)", ge=0)
    eval_initial: bool = setting(True, "also evaluate the start policy (eval-initial/), when eval_every > 0")
    eval_bench: str = setting("arith", "held-out sets, comma-separated: arith, benchmark names, files or problems "
                                       "artifact directories")
    eval_problems: int | None = same_as(EvalConfig, "limit")
    eval_k: int = same_as(EvalConfig, "k")
    eval_temperature: float = same_as(EvalConfig, "temperature")
    eval_top_p: float = same_as(EvalConfig, "top_p")
    eval_seed: int | None = setting(None, "seed of the held-out evals (unset: `seed`); give every scheme and seed of "
                                          "a comparison the same one and their evals share their sampling noise, "
                                          "so paired differences are clean", ge=0)
    data_dir: str | None = setting(None, DATA_DIR_HELP)
    threads: int = setting(1, "torch CPU threads (1 is fastest for the tiny policy on a shared 2-core machine)",
                           ge=1)
    report_to: str = same_as(TrackingConfig, "report_to")

    def __post_init__(self) -> None:
        check_settings(self)  # the bounds of every key, its own and the stages' (same_as carries them)
        try:  # every stage's own checks, before any work (not at the first round that needs them)
            self.sample_config(0), self.judge_config(), self.segment_config(), self.train_config(0)
            self.eval_config(), self.tracking_config()
        except ThinkrlError as e:
            raise ThinkrlError(f"experiment: {e}") from None

    # -- loading and saving
    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
        """Defaults < the TOML file at `path` < `overrides` (None values in overrides are ignored)."""
        values: dict[str, Any] = {}
        if path is not None:
            values.update(read_toml(Path(path), cls))
        for k, v in (overrides or {}).items():
            if v is not None:
                values[k] = coerce(cls, k, v, "option")
        return cls(**values)

    def to_toml(self) -> str:
        lines = ["# thinkrl experiment: resolved settings (`thinkrl run FILE --name NAME` reads this format)"]
        for f in fields(self):
            value = getattr(self, f.name)
            lines.append(f"# {f.metadata['help']}")
            lines.append(f"# {f.name} = (unset)" if value is None else f"{f.name} = {toml_value(value)}")
        return "\n".join(lines) + "\n"

    # -- the stages' settings
    def sample_config(self, round_: int) -> SampleConfig:
        return project(self, SampleConfig, seed=self.seed, round=round_)

    def judge_config(self) -> JudgeConfig:
        from thinkrl.thoughts import scheme_named

        used = scheme_named(self.scheme).uses_judgments  # outcome ignores the labels: no share stops it
        return project(self, JudgeConfig, **({} if used else {"max_unknown": 1.0}))

    def segment_config(self) -> SegmentConfig:
        return project(self, SegmentConfig)

    def train_config(self, round_: int, continue_from: Path | None = None) -> TrainConfig:
        """Round `round_`'s training settings. One policy trains across the rounds: the lr schedule spans the
        planned steps of every round, and `continue_from` (the previous round's trainer state) carries the
        optimizer and the global step on."""
        steps_per_round = self.epochs * -(-self.prompts_per_round // self.prompts_per_step)
        return project(self, TrainConfig, schedule_steps=self.rounds * steps_per_round,
                       continue_from=str(continue_from) if continue_from else None,
                       ref_policy=self.policy if self.beta > 0 else None,  # KL to the start policy, every round
                       seed=round_seed(self.seed, round_, "train"))

    def eval_config(self) -> EvalConfig:
        return project(self, EvalConfig, seed=self.seed if self.eval_seed is None else self.eval_seed)

    def tracking_config(self) -> TrackingConfig:
        return project(self, TrackingConfig)

    def eval_due(self, round_: int) -> bool:
        return self.eval_every > 0 and ((round_ + 1) % self.eval_every == 0 or round_ == self.rounds - 1)


def round_seed(seed: int, round_: int, what: str) -> int:
    """A 31-bit seed for `what` (train, problems) in round `round_`, from the base seed."""
    digest = hashlib.sha256(f"thinkrl.experiment/{what}/{seed}/{round_}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1


def docs_markdown() -> str:
    """The reference of every experiment key (data/experiments/README.md)."""
    d = ExperimentConfig()
    lines = ["# Experiment files", "",
             "Generated from `thinkrl/experiment.py` by `python -m thinkrl.experiment > data/experiments/README.md`.",
             "", "An experiment file is TOML with flat `key = value` pairs (no tables, except as the value of "
             "`judge_extra_body`: `judge_extra_body = {chat_template_kwargs = {enable_thinking = false}}`); an "
             "unknown key is an error. `thinkrl run FILE --name NAME` reads it; every key is also an option (`--lr 2e-4`, "
             "`--eval-every 2`), and options override the file, which overrides the defaults below. The "
             "resolved settings are saved in `runs/NAME/config.toml`. A key declared by a stage is that stage's "
             "setting: the same default and meaning as the stage command's option (column `setting`). The "
             "generation settings (`max_tokens`, `template`, `engine`, `dtype`, `device`, the vLLM options, "
             "`part_size`) apply to the training rollouts and the held-out eval alike: one engine serves both.", "",
             "Example: [arith-grpo-vs-tp.toml](arith-grpo-vs-tp.toml).", "",
             "| key | type | default | setting | meaning |", "|---|---|---|---|---|"]
    for f in fields(ExperimentConfig):
        default = getattr(d, f.name)
        shown = "(unset)" if default is None else ("(required)" if default == "" else toml_value(default))
        cls, name = root(ExperimentConfig, f.name)
        where = "" if cls is ExperimentConfig else f"`{cls.__name__}.{name}`"
        meaning = help_of(ExperimentConfig, f.name).replace("|", "/")
        if aliases_of(ExperimentConfig, f.name):
            meaning += " (TRL's name, also a key: " + ", ".join(f"`{a}`" for a in aliases_of(ExperimentConfig, f.name)) + ")"
        lines.append(f"| `{f.name}` | {type_name(field_type(ExperimentConfig, f.name))} | `{shown}` | {where} | "
                     f"{meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(docs_markdown(), end="")
