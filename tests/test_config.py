"""Config: defaults → YAML → overrides, validation naming the field, round trip."""

from pathlib import Path

import pytest

from oskar_ray.config import config_from_dict, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments/configs/smoke.yaml"


def test_layers_apply_in_order(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("budget: {input_tokens: 40}\nmodalities: {video: {mask_ratio: 0.6}}\n")
    cfg = load_config(path, ["budget.input_tokens=48", "train.lr=1e-2"])
    assert cfg.budget.input_tokens == 48  # override beats YAML
    assert cfg.modalities["video"].mask_ratio == 0.6  # YAML beats default
    assert cfg.budget.target_tokens == 32  # default kept
    assert cfg.train.lr == 0.01
    # naming one modality keeps the other built-ins configured
    assert cfg.enabled_modalities == ["video", "skeleton", "text"]


def test_shipped_configs_load():
    tiny = load_config(SMOKE)
    base = load_config(ROOT / "experiments/configs/base.yaml")
    assert (tiny.model.dim, tiny.model.depth) == (128, 4)
    assert (base.model.dim, base.model.depth, base.modalities["video"].height) == (768, 12, 224)


@pytest.mark.parametrize(
    "override, field",
    [
        ("budget.input_tokens=0", "budget.input_tokens"),
        ("modalities.video.mask_ratio=1.5", "modalities.video.mask_ratio"),
        ("budget.target_tokens=500", "budget.target_tokens"),
        ("budget.input_tokens=500", "budget.input_tokens"),
        ("model.width=3", "model.width"),
        ("modalities.audio.enabled=true", "modalities.audio"),
        ("train.lr=fast", "train.lr"),
        ("train.steps=1.5", "train.steps"),
        ("model.heads=5", "model.dim"),
        ("modalities.video.patch=5", "modalities.video.height"),
        ("modalities.text.masking=tube", "modalities.text.masking"),
        ("ema.end=1.2", "ema.end"),
        ("predictor.kind=mlp", "predictor.kind"),
        ("train.precision=fp8", "train.precision"),
        ("model.align_weights={text: 5}", "model.align_weights.text"),  # text not in align_to
        ("model.align_weights={skeleton: -1}", "model.align_weights.skeleton"),
        ("model.align_to=[skeleton, skeleton]", "model.align_to"),
        ("model.align_to=video", "model.align_from"),  # aligned to itself
    ],
)
def test_invalid_values_name_the_field(override, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        load_config(SMOKE, [override])


def test_an_experiment_yaml_states_only_what_it_changes_over_its_base(tmp_path):
    (tmp_path / "sub").mkdir()
    middle = tmp_path / "sub" / "middle.yaml"
    middle.write_text(f"base: {SMOKE}\nbudget: {{input_tokens: 96}}\nmodalities: {{video: {{mask_ratio: 0.25}}}}\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text("base: sub/middle.yaml\nmodalities: {video: {input: diff}}\n")  # relative to exp.yaml
    cfg = load_config(exp, ["train.steps=7"])
    tiny = load_config(SMOKE)
    assert cfg.modalities["video"].input == "diff"  # the experiment's own change
    assert cfg.modalities["video"].mask_ratio == 0.25 and cfg.budget.input_tokens == 96  # its base's
    assert cfg.modalities["video"].height == tiny.modalities["video"].height == 32  # the base's base, merged
    assert cfg.model.dim == tiny.model.dim and cfg.train.steps == 7
    middle.write_text("base: ../exp.yaml\n")
    with pytest.raises(ValueError, match="loop"):
        load_config(exp)
    middle.write_text("base: gone.yaml\n")
    with pytest.raises(FileNotFoundError, match="middle.yaml: base 'gone.yaml' not found"):
        load_config(exp)


def test_an_empty_mapping_clears_its_base_and_tiny_pose_is_the_recipe_without_text():
    recipe = load_config(ROOT / "experiments/configs/tiny.yaml")
    pose = load_config(ROOT / "experiments/configs/tiny_pose.yaml")
    assert recipe.model.align_weights == {"text": 10} and recipe.budget.input_weights["text"] > 0
    assert pose.model.align_weights == {} and pose.model.align_to == ["skeleton"]
    assert pose.budget.input_weights["text"] == pose.budget.target_weights["text"] == 0
    assert pose.model.dim == recipe.model.dim and pose.modalities["video"].input == recipe.modalities["video"].input


def test_an_empty_section_changes_nothing(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {ROOT / 'experiments/configs/tiny.yaml'}\nbudget: {{}}\nmodalities: {{}}\n")
    assert load_config(child) == load_config(ROOT / "experiments/configs/tiny.yaml")


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="section.field=value"):
        load_config(None, ["budget.input_tokens"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_config(bad)


def test_all_modalities_disabled_is_an_error():
    off = {m: {"enabled": False} for m in ("video", "skeleton", "text")}
    with pytest.raises(ValueError, match="at least one modality"):
        config_from_dict({"modalities": off})


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(SMOKE, ["ema.modality_start.video=0.99", "eval.tasks=action,vqa"])
    assert cfg.eval.tasks == ["action", "vqa"]
    again = load_config(save_config(cfg, tmp_path / "resolved.yaml"))
    assert again == cfg
    assert cfg.flat()["budget.input_tokens"] == 64
