"""Config loading, dotted overrides, presets and the validation messages users will read."""

import pytest

from megatron_glm.config.loader import ConfigError, load_run_config, model_preset_names, to_yaml
from megatron_glm.config.validate import config_problems, validate

PRESETS = ["glm-base", "glm-large", "glm-410m", "glm-515m", "glm-2b", "glm-10b", "glm-130b", "glm-tiny"]


def test_all_overview_sizes_have_presets():
    assert set(PRESETS) <= set(model_preset_names())


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_validates_and_names_its_source(name):
    run = load_run_config(name)
    validate(run)
    assert run.model.name == name
    assert run.model.source


def test_glm130b_preset_is_the_paper_model():
    model = load_run_config("glm-130b").model
    assert (model.num_layers, model.hidden_size, model.num_attention_heads) == (70, 12288, 96)
    assert model.resolved_ffn_hidden_size == 32768
    assert model.vocab_size == 150008 and model.resolved_padded_vocab_size == 150528
    assert model.seq_length == 2048 and model.head_dim == 128
    assert model.embedding_init_std == 0.0052
    assert model.embedding_grad_shrink.alpha == 0.1 and model.embedding_grad_shrink.apply_to_output_weight


def test_dotted_overrides_are_typed():
    run = load_run_config("glm-tiny", ["parallel.tensor=2", "model.hidden_dropout=0.1",
                                       "model.embedding_grad_shrink.schedule=[[0, 0.1], [100, 1.0]]"])
    assert run.parallel.tensor == 2 and run.model.hidden_dropout == 0.1
    assert run.model.embedding_grad_shrink.schedule == [(0, 0.1), (100, 1.0)]


def test_unknown_override_suggests_the_field():
    with pytest.raises(ConfigError, match="did you mean 'hidden_size'"):
        load_run_config("glm-tiny", ["model.hiden_size=64"])


def test_wrong_type_is_reported():
    with pytest.raises(ConfigError, match="'parallel.tensor' must be an integer"):
        load_run_config("glm-tiny", ["parallel.tensor=two"])


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="glm-130b"):
        load_run_config("glm-13b")


def test_yaml_errors_name_file_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: glm-tiny\nparallel:\n  tensor: 2\n  pipelin: 2\n")
    with pytest.raises(ConfigError) as error:
        load_run_config(str(path))
    assert f"{path}:4" in str(error.value) and "did you mean 'pipeline'" in str(error.value)


def test_run_yaml_with_model_preset_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: glm-base\n  seq_length: 1024\nparallel:\n  tensor: 4\nprecision: bf16\n")
    run = load_run_config(str(path))
    assert run.model.hidden_size == 768 and run.model.seq_length == 1024
    assert run.parallel.tensor == 4 and run.precision == "bf16"
    assert "hidden_size: 768" in to_yaml(run)


def test_heads_not_divisible_by_tp_suggests_divisors():
    run = load_run_config("glm-130b", ["parallel.tensor=5"])
    problems = "\n".join(config_problems(run))
    assert "num_attention_heads=96 is not divisible by parallel.tensor=5" in problems
    assert "1, 2, 3, 4, 6, 8" in problems


def test_layers_not_divisible_by_pipeline():
    run = load_run_config("glm-130b", ["parallel.pipeline=8"])
    problems = "\n".join(config_problems(run))
    assert "num_layers=70 is not divisible by parallel.pipeline=8" in problems
    assert "first_stage_layers" in problems


def test_glm130b_uneven_pipeline_is_valid():
    """GLM-130B's own split: 8 layers on the first and last of 8 stages, 9 on the middle six."""
    run = load_run_config("glm-130b", ["parallel.tensor=4", "parallel.pipeline=8",
                                       "parallel.first_stage_layers=8", "parallel.last_stage_layers=8",
                                       "train.global_batch_size=4224"])
    assert config_problems(run, world_size=768) == []


def test_world_size_must_divide():
    run = load_run_config("glm-tiny", ["parallel.tensor=2", "parallel.pipeline=2"])
    problems = "\n".join(config_problems(run, world_size=6))
    assert "world size 6 is not divisible by parallel.tensor x parallel.pipeline = 4" in problems


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as error:
        load_run_config("glm-tiny", ["precision=fp8", "recompute.granularity=some", "parallel.tensor=x"])
    assert all(f"override '{o}'" in str(error.value) for o in ("precision=fp8", "recompute.granularity=some",
                                                                "parallel.tensor=x"))
    run = load_run_config("glm-tiny", ["parallel.tensor=3"])
    run.precision, run.recompute.granularity = "fp8", "some"
    problems = config_problems(run)
    assert len(problems) >= 3
    with pytest.raises(ConfigError):
        validate(run)


def test_missing_data_is_reported_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # tiny-cpu's paths are relative; nothing is prepared here
    problems = "\n".join(config_problems(load_run_config("tiny-cpu"), world_size=4))
    assert "data.tokenizer_model=runs/demo/data/tokenizer.model: no such file" in problems
    assert "data.sources[0].prefix=runs/demo/data/pile: missing runs/demo/data/pile.bin" in problems
    assert "glm-prep tokenize" in problems


def test_override_errors_name_the_override_not_the_preset_file():
    with pytest.raises(ConfigError) as error:
        load_run_config("glm-tiny", ["model.hidden_size=abc"])
    assert str(error.value) == "- override 'model.hidden_size=abc': 'model.hidden_size' must be an integer, got 'abc'"
    with pytest.raises(ConfigError, match=r"override 'train=3': 'train' must be a mapping"):
        load_run_config("glm-tiny", ["train=3"])


def test_exponents_without_a_dot_are_numbers():
    """YAML 1.1 reads 1e-3 as a string; a float field takes it as the number everybody means."""
    run = load_run_config("glm-tiny", ["train.peak_lr=1e-3", "train.min_lr=5E-5"])
    assert (run.train.peak_lr, run.train.min_lr) == (1e-3, 5e-5)
    with pytest.raises(ConfigError, match="must be an integer"):
        load_run_config("glm-tiny", ["train.steps=1e3"])


def test_init_from_must_be_a_dist_checkpoint_before_anything_starts(tmp_path):
    run = load_run_config("glm-tiny", ["data.synthetic=true", f"train.init_from={tmp_path / 'export'}"])
    assert "no such directory" in "\n".join(config_problems(run, training=True))
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model.safetensors").write_bytes(b"")
    problems = "\n".join(config_problems(run, training=True))
    assert "a safetensors export" in problems and f"glm-ckpt convert {tmp_path / 'export'} DIR --to dist" in problems
    sat = tmp_path / "sat"
    (sat / "12").mkdir(parents=True)
    (sat / "latest").write_text("12\n")
    run = load_run_config("glm-tiny", ["data.synthetic=true", f"train.init_from={sat}"])
    assert "a SAT (GLM-130B release) checkpoint" in "\n".join(config_problems(run, training=True))
    dist = tmp_path / "dist" / "iter_0000012"
    dist.mkdir(parents=True)
    (dist / ".metadata").write_bytes(b"")
    (dist / "metadata.json").write_text("{}")
    (tmp_path / "dist" / "latest").write_text("iter_0000012\n")
    run = load_run_config("glm-tiny", ["data.synthetic=true", f"train.init_from={tmp_path / 'dist'}"])
    assert config_problems(run, training=True) == []


def test_enum_fields_take_only_their_choices(tmp_path):
    """precision, recompute, attention backend, spike policy, fault kind: Literal types in the
    schema, checked by the loader (file and line) and by validation (configs built in code)."""
    path = tmp_path / "run.yaml"
    path.write_text("model: glm-tiny\nrecompute:\n  granularity: ful\n")
    with pytest.raises(ConfigError) as error:
        load_run_config(str(path))
    assert (f"{path}:3: 'recompute.granularity' must be one of none, selective, full, got 'ful'; "
            f"did you mean 'full'?") in str(error.value)
    with pytest.raises(ConfigError, match="'precision' must be one of fp32, fp16, bf16, got 'fp8'"):
        load_run_config("glm-tiny", ["precision=fp8"])
    run = load_run_config("glm-tiny")
    run.train.spike_policy = "ignore"
    assert "train.spike_policy='ignore'; choose one of log, skip, rollback" in config_problems(run)


def test_eval_batches_sets_how_much_validation_sees():
    from megatron_glm.model.describe import _single_process_groups
    from megatron_glm.training.batches import SyntheticBatches

    run = load_run_config("glm-tiny", ["train.eval_batches=3", "model.seq_length=64"])
    with _single_process_groups():
        data = SyntheticBatches(run, global_batch=4, micro_batch=2, seq_length=64)
        batches = data.validation_batches()
        assert len(batches) == 3 * 2
        again = data.validation_batches()
        assert all(a.tokens.equal(b.tokens) for a, b in zip(batches, again))  # the same held-out data each time
        assert not batches[0].tokens.equal(batches[2].tokens)
    run.train.eval_batches = 0
    assert any("train.eval_batches=0 must be >= 1" in p for p in config_problems(run))
