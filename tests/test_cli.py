"""The ``oskar`` command line: pretrain writes weights + resolved config; bad config → exit 2."""

from oskar_ray.cli import main
from oskar_ray.config import load_config
from oskar_ray.model import Oskar

SMOKE = "experiments/configs/smoke.yaml"


def test_pretrain_writes_weights_and_resolved_config(tmp_path, capsys):
    sets = ["train.steps=4", "train.batch_size=4", "train.log_every=2",
            f"train.output_dir={tmp_path}", "tracking.run_name=smoke"]
    assert main(["pretrain", "--local", "--config", SMOKE, *[a for s in sets for a in ("--set", s)]]) == 0
    run = tmp_path / "smoke"
    cfg = load_config(run / "config.yaml")
    assert cfg.train.steps == 4
    Oskar(cfg).load_weights(run / "weights.safetensors")
    out = capsys.readouterr().out
    assert "step      2/4" in out and "samples/s" in out


def test_bad_config_is_a_clear_error(capsys):
    assert main(["pretrain", "--config", SMOKE, "--set", "budget.input_tokens=0"]) == 2
    assert "budget.input_tokens must be positive" in capsys.readouterr().err
    assert main(["pretrain", "--config", "missing.yaml"]) == 2


def test_sweep_is_one_subcommand_with_the_sweep_scripts_flags(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "nope.yaml"), "--smoke"]) == 2
    assert "sweep file not found" in capsys.readouterr().err
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nbase: ../missing.yaml\nspace: {train.lr: [1.0e-3]}\n")
    assert main(["sweep", str(spec)]) == 2
    assert "base '../missing.yaml' not found" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--profile", "gpu"]) == 2
    assert "no profile 'gpu'" in capsys.readouterr().err
