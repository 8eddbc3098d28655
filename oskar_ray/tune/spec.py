"""Sweep specs: the YAML under ``experiments/configs/sweeps/``, profiles, CLI edits, grid validation.

Runbook (a sweep YAML)::

    name: token_budget                       # MLflow tag oskar.sweep, Tune experiment prefix
    base: ../tiny.yaml                       # the trial config, relative to this file (as a config's base:)
    overrides: [train.steps=150, eval.online_probe_every=25]   # every trial
    space:                                   # dotted config key -> axis
      budget.input_tokens: {grid: [32, 64, 128]}      # also: a bare list (= grid), {choice: [...]},
      budget.target_tokens: {grid: [16, 32, 64]}      # {uniform|loguniform|randint: [low, high]}
      modalities:                                     # a named-variant axis: bundles of overrides
        variants: {video: [modalities.skeleton.enabled=false], all: []}
    scheduler: {kind: asha, metric: probe/fusion/knn_top1, mode: max, grace_period: 25, reduction_factor: 3}
    select: {metric: eval/action/fusion/linear/top1, mode: max}   # "best trial", on the final metrics
    num_samples: 1        # repeats of the grid (random axes: draws)
    max_concurrent: 0     # 0 = as many as the cluster's resources allow
    trial_cpu: 0.25       # CPUs of each trial's driver (the Tune function); the trainer asks for its own
    storage_path: runs/sweeps
    experiment: ""        # MLflow experiment ("" = oskar-sweep-<name>)
    profiles:             # --profile NAME (--smoke = --profile smoke); keys replace the top level,
      smoke: {...}        # except `overrides` (appended) and `scheduler` (merged); a profile with its own
      gpu: {base: ...}    # `base` starts from its own overrides only

Every grid point is checked up front with the config validation, so a sweep
never starts with trials that would fail on a bad combination.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import OskarConfig, base_path, load_config
from ..config.loading import read_mapping
from ..metric_names import CI_HIGH, CI_LOW, END_TO_END_PROTOCOLS, PROBE_PREFIX, VQA_VIEWS, is_interval, probe_metrics

AXIS_KINDS = ("grid", "choice", "uniform", "loguniform", "randint", "variants")


@dataclass
class SchedulerSpec:
    #: "asha" (asynchronous early stopping on ``metric``), "sha" (synchronous: trials pause at each rung
    #: until all reached it) or "fifo" (every trial runs to the end); see oskar_ray.tune.schedulers
    kind: str = "asha"
    metric: str = "probe/mean"
    mode: str = "max"
    #: in training steps (ASHA's time attribute is the reported ``step``)
    grace_period: int = 25
    reduction_factor: float = 3.0


@dataclass
class SelectSpec:
    metric: str = "eval/action/fusion/linear/top1"
    mode: str = "max"


@dataclass
class SweepSpec:
    name: str
    base: str
    overrides: list[str] = field(default_factory=list)
    space: dict[str, Any] = field(default_factory=dict)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    select: SelectSpec = field(default_factory=SelectSpec)
    num_samples: int = 1
    max_concurrent: int = 0
    trial_cpu: float = 0.25
    storage_path: str = "runs/sweeps"
    experiment: str = ""
    description: str = ""
    #: "shuffled": grid points start in a seeded random order (ASHA assumes random arrival: a sorted
    #: grid would let whatever comes first — here the cheapest budgets — pass every first rung); "grid"
    order: str = "shuffled"
    seed: int = 0
    profile: str = ""

    @property
    def mlflow_experiment(self) -> str:
        return self.experiment or f"oskar-sweep-{self.name}"

    def swept_keys(self) -> list[str]:
        """Dotted config keys the sweep varies (a variant axis contributes the keys its bundles set)."""
        keys: list[str] = []
        for name, axis in self.space.items():
            if axis_kind(axis) == "variants":
                keys += [o.partition("=")[0].strip() for bundle in axis["variants"].values() for o in bundle]
            else:
                keys.append(name)
        return list(dict.fromkeys(keys))

    def base_config(self, extra: list[str] | None = None) -> OskarConfig:
        return load_config(self.base, self.overrides + list(extra or []))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_spec(path: str | Path, profile: str = "") -> SweepSpec:
    """The sweep at ``path`` with ``profile`` applied; raises ValueError naming the bad field."""
    path = Path(path)
    raw = read_mapping(path, "sweep")
    profiles = raw.pop("profiles", {}) or {}
    if profile:
        if profile not in profiles:
            raise ValueError(f"{path}: no profile {profile!r} (profiles: {sorted(profiles)})")
        raw = apply_profile(raw, profiles[profile])
    if raw.get("base"):
        raw["base"] = str(base_path(path, raw["base"]))
    return spec_from_dict(raw, profile)


def apply_profile(raw: dict[str, Any], prof: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for key, value in (prof or {}).items():
        if key == "overrides" and "base" not in prof:
            out["overrides"] = list(out.get("overrides") or []) + list(value or [])
        elif key == "scheduler":
            out["scheduler"] = {**(out.get("scheduler") or {}), **(value or {})}
        else:
            out[key] = copy.deepcopy(value)
    if "base" in prof and "overrides" not in prof:
        out["overrides"] = []
    return out


def spec_from_dict(raw: dict[str, Any], profile: str = "") -> SweepSpec:
    raw = copy.deepcopy(raw)
    known = {f for f in SweepSpec.__dataclass_fields__} - {"profile"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"sweep: unknown key {unknown[0]!r} (valid: {sorted(known)})")
    for key in ("name", "base"):
        if not raw.get(key):
            raise ValueError(f"sweep.{key} is required")
    scheduler = SchedulerSpec(**_section(raw.pop("scheduler", None), SchedulerSpec, "scheduler"))
    select = SelectSpec(**_section(raw.pop("select", None), SelectSpec, "select"))
    spec = SweepSpec(**raw, scheduler=scheduler, select=select, profile=profile)
    spec.overrides = [str(o) for o in spec.overrides or []]
    check_spec(spec)
    return spec


def _section(value: Any, cls: type, name: str) -> dict[str, Any]:
    value = value or {}
    if not isinstance(value, dict):
        raise ValueError(f"sweep.{name} must be a mapping, got {value!r}")
    unknown = sorted(set(value) - set(cls.__dataclass_fields__))
    if unknown:
        raise ValueError(f"sweep.{name}.{unknown[0]}: unknown key (valid: {sorted(cls.__dataclass_fields__)})")
    return value


def axis_kind(axis: Any) -> str:
    if isinstance(axis, list):
        return "grid"
    if isinstance(axis, dict) and len(axis) == 1 and next(iter(axis)) in AXIS_KINDS:
        return next(iter(axis))
    raise ValueError(f"a sweep axis must be a list or one of {{{', '.join(AXIS_KINDS)}: ...}}, got {axis!r}")


def check_spec(spec: SweepSpec) -> None:
    s = spec.scheduler
    if s.kind not in ("asha", "sha", "fifo"):
        raise ValueError(f"sweep.scheduler.kind must be 'asha', 'sha' or 'fifo', got {s.kind!r}")
    for name, mode in (("scheduler", s.mode), ("select", spec.select.mode)):
        if mode not in ("min", "max"):
            raise ValueError(f"sweep.{name}.mode must be 'min' or 'max', got {mode!r}")
    if s.grace_period < 1 or s.reduction_factor <= 1:
        raise ValueError(f"sweep.scheduler: grace_period must be >= 1 and reduction_factor > 1, got "
                         f"{s.grace_period} and {s.reduction_factor}")
    if spec.order not in ("shuffled", "grid"):
        raise ValueError(f"sweep.order must be 'shuffled' or 'grid', got {spec.order!r}")
    if spec.num_samples < 1 or spec.max_concurrent < 0 or spec.trial_cpu <= 0:
        raise ValueError("sweep: num_samples >= 1, max_concurrent >= 0 and trial_cpu > 0 are required")
    if not spec.space:
        raise ValueError("sweep.space is empty: name at least one config key to sweep")
    for name, axis in spec.space.items():
        kind = axis_kind(axis)
        values = axis if isinstance(axis, list) else axis[kind]
        if kind == "variants" and (not isinstance(values, dict) or not values):
            raise ValueError(f"sweep.space.{name}.variants must map variant names to override lists")
        if kind in ("uniform", "loguniform", "randint") and (not isinstance(values, list) or len(values) != 2):
            raise ValueError(f"sweep.space.{name}.{kind} must be [low, high], got {values!r}")
        if kind in ("grid", "choice") and (not isinstance(values, list) or not values):
            raise ValueError(f"sweep.space.{name}.{kind} must be a non-empty list, got {values!r}")


def edit_spec(spec: SweepSpec, *, overrides: list[str] = (), grid: list[str] = (), **fields: Any) -> SweepSpec:
    """CLI edits: ``--set`` overrides appended, ``--grid key=v1,v2`` replaces/adds an axis, scalars replaced."""
    spec = copy.deepcopy(spec)
    spec.overrides += list(overrides)
    for item in grid:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--grid {item!r} must look like section.field=v1,v2,...")
        spec.space[key.strip()] = {"grid": [yaml.safe_load(v) for v in text.split(",") if v.strip()]}
    for name, value in fields.items():
        if value is None:
            continue
        if name.startswith("scheduler_"):
            setattr(spec.scheduler, name.removeprefix("scheduler_"), value)
        else:
            setattr(spec, name, value)
    check_spec(spec)
    return spec


def trial_overrides(spec: SweepSpec, params: dict[str, Any]) -> list[str]:
    """``key=value`` overrides of one trial's sampled point (variant names expand to their bundles)."""
    out: list[str] = []
    for name, value in params.items():
        axis = spec.space.get(name)
        if axis is not None and axis_kind(axis) == "variants":
            out += list(axis["variants"][value])
        else:
            out.append(f"{name}={_yaml_value(value)}")
    return out


def _yaml_value(value: Any) -> str:
    value = value.item() if hasattr(value, "item") else value  # numpy scalars from Tune's samplers
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every combination of the grid/choice/variant axes (ranged axes at their two ends)."""
    names, values = [], []
    for name, axis in spec.space.items():
        kind = axis_kind(axis)
        names.append(name)
        values.append(list(axis if isinstance(axis, list) else axis[kind]))  # variants: their names
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


def validate_points(spec: SweepSpec) -> int:
    """Load the config of every grid point; raise one ValueError listing all invalid ones."""
    points = grid_points(spec)
    bad = []
    for point in points:
        try:
            spec.base_config(trial_overrides(spec, point))
        except ValueError as err:
            bad.append(f"  {_describe(point)}: {err}")
    if bad:
        raise ValueError(f"sweep {spec.name}: {len(bad)} of {len(points)} grid points are invalid configs:\n"
                         + "\n".join(bad) + "\nnarrow the grid (--grid key=v1,v2) or change the base (--set ...)")
    check_metrics(spec, spec.base_config())
    return len(points)


def check_metrics(spec: SweepSpec, cfg: OskarConfig) -> None:
    """The scheduler ranks on what trials report while training, the selection on what they are evaluated on:
    a name no trial will log would only show up as a KeyError (or a silently unranked sweep) hours later.
    Training metrics are checked by family (``loss*``, ``reg/*``, ``health/*`` depend on the recipe's
    weights); the online probe's names exactly, since they exist only when it runs."""
    probe = probe_metrics(cfg.eval.online_probe_views) if cfg.eval.online_probe_every > 0 else []
    families = ("loss", "reg/", "health/")
    choices = f"loss, loss/<modality>, loss/align..., reg/..., health/...{', ' if probe else ''}{', '.join(probe)}"
    for name, metric, active in (("scheduler", spec.scheduler.metric, spec.scheduler.kind != "fifo"),
                                 ("select", spec.select.metric, True)):
        if not active:
            continue
        if is_interval(metric):
            raise ValueError(f"sweep.{name}.metric {metric!r} is the end of a 95 % interval, not a metric: rank on "
                             f"{metric.removesuffix(CI_LOW).removesuffix(CI_HIGH)!r}")
        if metric.startswith("eval/"):
            task = metric.removeprefix("eval/").split("/", 1)[0]
            if name == "scheduler" or task not in cfg.eval.tasks:
                where = "is only logged after training" if name == "scheduler" else f"task {task!r} is not in"
                raise ValueError(f"sweep.{name}.metric {metric!r}: {where} eval.tasks {cfg.eval.tasks}")
            _check_eval_metric(name, metric, cfg)
        elif metric.startswith(PROBE_PREFIX) and metric not in probe:
            raise ValueError(f"sweep.{name}.metric {metric!r} is never logged: the online probe logs "
                             f"{probe or 'nothing'} (eval.online_probe_every={cfg.eval.online_probe_every}, "
                             f"eval.online_probe_views={cfg.eval.online_probe_views})")
        elif not metric.startswith((*families, PROBE_PREFIX, "eval/")):
            raise ValueError(f"sweep.{name}.metric {metric!r} is not a metric trials log (training: {choices}"
                             f"{'' if name == 'scheduler' else '; after training: eval/<task>/... of eval.tasks'})")


def _check_eval_metric(name: str, metric: str, cfg: OskarConfig) -> None:
    """An action protocol or VQA reading the trial's eval settings leave out is never logged."""
    parts = metric.split("/")
    e = cfg.eval
    if parts[1] in ("action", "lowshot") and len(parts) >= 5:  # eval/<task>/<view>/<protocol>/...
        protocols = [p for p in e.action_protocols if p not in END_TO_END_PROTOCOLS or e.finetune_epochs > 0]
        if parts[3] not in protocols:
            raise ValueError(f"sweep.{name}.metric {metric!r} is never logged: the {parts[1]} task runs "
                             f"{', '.join(protocols)} (eval.action_protocols={e.action_protocols}, "
                             f"eval.finetune_epochs={e.finetune_epochs})")
    if parts[1] == "vqa" and len(parts) >= 3 and parts[-1] != "prior":  # the priors come from the labels alone
        view = parts[2] if parts[2] in VQA_VIEWS else "video"  # eval/vqa/accuracy reads the video view
        if view not in e.vqa_views:
            raise ValueError(f"sweep.{name}.metric {metric!r} is never logged: eval.vqa_views={e.vqa_views}")


def _describe(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def tune_space(spec: SweepSpec) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ray Tune ``param_space`` (flat, keyed by dotted config key or variant-axis name) and the
    grid points to start with, in trial order (``points_to_evaluate`` of Tune's variant generator).

    With ``order: shuffled`` the grid/variant axes become ``tune.choice`` in the space and every
    combination is listed once per sample, shuffled with ``seed``: each point replaces one sample,
    so the trials are exactly the grid, in that order. Random axes are sampled per trial either way.
    """
    from ray import tune

    make = {"grid": tune.grid_search, "choice": tune.choice, "variants": lambda v: tune.grid_search(list(v)),
            "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v),
            "randint": lambda v: tune.randint(*v)}
    enumerated = {n: a for n, a in spec.space.items() if axis_kind(a) in ("grid", "variants")}
    if spec.order == "grid" or not enumerated:
        return {n: make[axis_kind(a)](_values(a)) for n, a in spec.space.items()}, []
    space = {n: tune.choice(list(_values(a))) if n in enumerated else make[axis_kind(a)](_values(a))
             for n, a in spec.space.items()}
    combos = [dict(zip(enumerated, c, strict=True)) for c in itertools.product(*map(_values, enumerated.values()))]
    rng = random.Random(spec.seed)
    points = []
    for _ in range(spec.num_samples):
        points += rng.sample(combos, len(combos))
    return space, points


def trial_count(spec: SweepSpec, points: list[dict[str, Any]]) -> int:
    """Trials Tune will run: the listed points (``order: shuffled``), else ``num_samples`` x the product
    of the axes Tune itself expands (grid and variants; other axes are sampled once per trial)."""
    if points:
        return len(points)
    expanded = [_values(a) for a in spec.space.values() if axis_kind(a) in ("grid", "variants")]
    return spec.num_samples * math.prod(len(v) for v in expanded)


def _values(axis: Any) -> Any:
    return axis if isinstance(axis, list) else axis[axis_kind(axis)]
