"""TrainConfig, presets, YAML files, CLI-string coercion and validation messages."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from tokrl.config import (
    DEFAULT_PRESET,
    PRESETS,
    SECTIONS,
    AlgoConfig,
    TrainConfig,
    config_from_dict,
    flat_fields,
    load_config,
    validate_config,
)


def test_default_is_the_tiny_preset():
    config = load_config()
    assert DEFAULT_PRESET == "tiny-multiplication"
    assert config.model == "tiny" and config.task == "multiplication" and config.device == "cpu"
    assert isinstance(config.algo, AlgoConfig)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_loads_its_values_and_passes_the_checks(name):
    config = load_config(name, validate=False)
    validate_config(config)  # raises on the first bad value
    fields = flat_fields()
    for key, want in PRESETS[name].items():
        where = fields[key]
        holder = getattr(config, where.section) if where.section else config
        got = getattr(holder, where.field.name)
        assert got == (tuple(want) if isinstance(got, tuple) else want), f"{name}: {key} is {got!r}, preset {want!r}"


def test_svamp_preset_is_the_paper_setting():
    c = load_config("svamp-qwen2-1.5b")
    assert (c.model, c.task, c.dtype, c.lr, c.prompts_per_step) == ("Qwen/Qwen2-1.5B", "svamp", "bfloat16", 1e-4, 4)
    g, lora = c.generation, c.lora
    assert (g.num_generations, g.temperature, g.top_p, g.max_new_tokens) == (8, 1.0, 1.0, 200)
    assert (lora.r, lora.alpha, lora.dropout) == (16, 32.0, 0.05)
    assert "lm_head" not in lora.target_modules


def test_every_field_has_help_and_a_unique_flat_key():
    fields = flat_fields()
    assert {"lora_r", "lora_alpha", "temperature", "replay_prob", "alpha", "steps"} <= set(fields)
    for key, spec in fields.items():
        assert spec.field.metadata.get("help"), f"{key} has no help"
    # Every leaf of the nested dataclasses has exactly one flat key.
    leaves = [f for f in dataclasses.fields(TrainConfig) if f.name not in SECTIONS]
    leaves += [f for s in SECTIONS for f in dataclasses.fields(getattr(TrainConfig(), s))]
    assert len(leaves) == len(fields)


def test_cli_strings_are_coerced():
    c = load_config(
        steps="3",
        lr="5e-4",
        resume="true",
        progress="false",
        task_options="{digits_a: 2, digits_b: 2}",
        lora_target_modules="q_proj,v_proj",
        loss_type="none",
        temperature="0.7",
    )
    assert c.steps == 3 and c.lr == 5e-4 and c.resume is True and c.progress is False
    assert c.task_options == {"digits_a": 2, "digits_b": 2}
    assert c.lora.target_modules == ["q_proj", "v_proj"]
    assert c.algo.loss_type is None and c.generation.temperature == 0.7


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("steps", "abc", "steps: expected an integer"),
        ("steps", 1.5, "steps: expected an integer"),
        ("resume", "maybe", "resume: 'maybe' is not a checkpoint directory"),
        ("task_options", "[1, 2]", "task_options: expected a mapping"),
        ("lr", "fast", "lr: expected a number"),
    ],
)
def test_bad_types_name_the_field(key, value, message):
    with pytest.raises(ValueError, match=message):
        load_config(**{key: value})


def test_unknown_key_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown config key 'lora_rr'.*'lora_r'"):
        load_config(lora_rr=4)
    with pytest.raises(ValueError, match=r"unknown config key 'num_generation'.*'num_generations'"):
        load_config(num_generation=4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_generations": 1}, "num_generations: must be >= 2"),
        ({"prompts_per_step": 0}, "prompts_per_step: must be >= 1"),
        ({"steps": -1}, "steps: must be >= 0"),
        ({"top_p": 0}, r"top_p: must be in \(0, 1\]"),
        ({"temperature": 0}, "temperature: must be > 0"),
        ({"eval_batch_size": 0}, "eval_batch_size: must be >= 1"),
        ({"num_iterations": 0}, "num_iterations: must be >= 1"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"lr_scheduler": "cosin"}, r"lr_scheduler: unknown 'cosin' \(did you mean 'cosine'\?\)"),
        ({"output_dir": "runs/{nope}"}, "output_dir: bad placeholder"),
        ({"loss_micro_batch": -1}, "loss_micro_batch: must be >= 0"),
        ({"selection": "sequentail"}, r"selection: unknown 'sequentail' \(did you mean 'sequential'\?\)"),
        ({"keep_prob": 0.0, "algorithm": "t-spmo"}, r"keep_prob: must be in \(0, 1\]"),
    ],
)
def test_batch_arithmetic_and_ranges(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(**overrides)


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match=r"algorithm: unknown 'ppo'; expected one of: grpo, s-grpo, t-spmo"):
        load_config(algorithm="ppo")
    with pytest.raises(ValueError, match=r"task: unknown 'gsm8k'.*multiplication.*svamp"):
        load_config(task="gsm8k")
    with pytest.raises(ValueError, match=r"preset: unknown 'tiny'.*svamp-qwen2-1.5b, tiny-multiplication"):
        load_config("tiny")
    with pytest.raises(ValueError, match=r"model: unknown './no/such/dir'.*'tiny'.*hub id"):
        load_config(model="./no/such/dir")


def test_yaml_file_nested_and_flat_with_precedence(tmp_path):
    nested = tmp_path / "nested.yaml"
    nested.write_text(yaml.safe_dump({"steps": 7, "lora": {"r": 4}, "algo": {"replay_prob": 0.25}}))
    c = load_config(config_file=nested, steps=9)  # the override wins over the file
    assert (c.steps, c.lora.r, c.algo.replay_prob) == (9, 4, 0.25)
    assert c.model == "tiny"  # the preset still fills what the file leaves out
    flat = tmp_path / "flat.yaml"
    flat.write_text("lora_alpha: 8\nmax_new_tokens: 5\n")
    c = load_config("svamp-qwen2-1.5b", flat)
    assert (c.lora.alpha, c.generation.max_new_tokens, c.model) == (8.0, 5, "Qwen/Qwen2-1.5B")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown config key 'stepz'.*'steps'"):
        load_config(config_file=bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_config(config_file=tmp_path / "missing.yaml")


def test_base_config_is_copied_not_mutated():
    base = load_config()
    derived = load_config(base=base, lora_r=2, lora_target_modules=["q_proj"], steps=1)
    assert (derived.lora.r, derived.steps) == (2, 1)
    assert base.lora.r == PRESETS[DEFAULT_PRESET]["lora_r"] and base.steps == PRESETS[DEFAULT_PRESET]["steps"]
    assert base.lora.target_modules != ["q_proj"]


def test_round_trip_through_a_dict():
    config = load_config(steps=3, replay_prob=0.5, task_options={"digits_a": 2})
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict()))) == config


def test_output_dir_placeholders():
    config = load_config(output_dir="runs/{task}-{algorithm}-s{seed}", algorithm="grpo", seed=3)
    assert str(config.resolved_output_dir()) == "runs/multiplication-grpo-s3"


def test_omp_num_threads_wins_over_the_presets_thread_count(monkeypatch, tmp_path):
    # The preset's num_threads: 2 overrode OMP_NUM_THREADS.
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert load_config("tiny-multiplication").num_threads == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert load_config("tiny-multiplication").num_threads == 0  # torch's default, which reads OMP_NUM_THREADS
    assert load_config("tiny-multiplication", num_threads=3).num_threads == 3  # an explicit value still wins
    config_file = tmp_path / "run.yaml"
    config_file.write_text("num_threads: 4\n")
    assert load_config("tiny-multiplication", config_file).num_threads == 4
