"""The pretraining health check both launchers run: RankMe / std on a fixed held-out batch, the collapse alarm.

Runbook::

    monitor = HealthMonitor.for_run(cfg, model, device)      # reads the held-out batch once
    if due(step, cfg.eval.rankme_every, cfg):
        metrics.update(monitor.check(model))                 # health/<modality>/{rankme,std}, health/collapse_alarm

``oskar pretrain`` runs it on rank 0 of the Ray Train workers (``worker_loop.py``), ``oskar pretrain --local``
in its one process (``single_process.py``): the same metrics at the same steps, so a local run answers the same
questions and ``experiments/bench_train.py --overhead`` compares the same work.
"""

from __future__ import annotations

from ..config import OskarConfig
from ..model import Oskar, move_batch
from ..probes.health import health_metrics
from ..probes.online import held_out_source


class HealthMonitor:
    """RankMe/std on a fixed held-out batch; raises the collapse alarm after K low readings."""

    def __init__(self, cfg: OskarConfig, batch: dict):
        self.cfg, self.batch, self.low_streak = cfg, batch, 0

    @classmethod
    def for_run(cls, cfg: OskarConfig, model: Oskar, device) -> HealthMonitor:
        return cls(cfg, held_out_batch(cfg, model, device))

    def check(self, model: Oskar) -> dict[str, float]:
        model.eval()
        metrics = health_metrics(model, self.batch)
        stds = [v for k, v in metrics.items() if k.endswith("/std")]
        self.low_streak = self.low_streak + 1 if stds and min(stds) < self.cfg.eval.collapse_std else 0
        metrics["health/collapse_alarm"] = float(self.low_streak >= self.cfg.eval.collapse_patience)
        return metrics


def held_out_batch(cfg: OskarConfig, model: Oskar, device) -> dict:
    """The health check's fixed batch: held-out clips of the dataset (its val split, or the carve of its train
    split the online probe uses), else the first batch of the pretraining split — the dataset's own clips
    either way; the model's example batch only when there is no dataset at all."""
    from ..data.pipeline import iterate_local

    if not cfg.data.path:
        return move_batch(model.example_batch(cfg.eval.batch_size, seed=10_007), device)
    source = held_out_source(cfg)
    stored, rows = (source.stored, source.rows) if source is not None else (cfg.data.train_split, None)
    batch = next(iterate_local(cfg.data.path, stored, cfg, batch_size=cfg.eval.batch_size, rows=rows), None)
    if batch is None:
        raise ValueError(f"{cfg.data.path}: split {stored!r} gave no clips for the health check's held-out batch")
    return move_batch(batch, device)


def alarm_tag(done: int) -> dict[str, str]:
    """The run tag a raised collapse alarm sets (the last step it was raised at)."""
    return {"health.collapse_alarm": f"step {done}"}


def collapse_reason(done: int) -> str:
    """Why a run stops on a fatal collapse alarm (``eval.collapse_fatal``): its error tag."""
    return f"representation collapse at step {done}"


def due(done: int, every: int, cfg: OskarConfig) -> bool:
    """Whether a periodic action (every ``every`` steps, 0 = never) is due; all are due at the last step."""
    return every > 0 and (done % every == 0 or done == cfg.train.steps)
