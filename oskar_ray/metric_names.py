"""Metric and task names one layer logs and another reads (no heavy imports: the report and the sweep spec load it).

The online kNN probe of pretraining (``oskar_ray.probes.online``) logs ``probe/<view>/knn_top1`` and
``probe/mean``; the scheduler ranks trials on them, the report draws them as training curves.
"""

PROBE_PREFIX = "probe/"
#: downstream tasks (``eval.tasks``; oskar_ray.eval.api.TASKS implements each) and their options
EVAL_TASKS = ("action", "lowshot", "localization", "retrieval", "vqa", "health", "robustness")
ACTION_PROTOCOLS = ("attentive", "linear", "knn", "finetune", "supervised")
#: the protocols that train the encoder end to end (eval.finetune_epochs = 0 turns them off)
END_TO_END_PROTOCOLS = ("finetune", "supervised")
VQA_VIEWS = ("video", "video+skeleton")
#: the action views (oskar_ray.probes.views.ACTION_VIEWS maps each to its encoder and modalities)
ACTION_VIEW_NAMES = ("video", "skeleton", "fusion")


#: the companions logged beside a metric with a 95 % interval (oskar_ray/eval/intervals.py computes them)
CI_LOW, CI_HIGH = "_ci95_lo", "_ci95_hi"


def interval_keys(metric: str) -> tuple[str, str]:
    """The keys of ``metric``'s 95 % interval ends."""
    return metric + CI_LOW, metric + CI_HIGH


def is_interval(metric: str) -> bool:
    """Whether ``metric`` is an interval end logged beside a metric (never a metric of its own)."""
    return metric.endswith((CI_LOW, CI_HIGH))


def probe_metrics(views: list[str]) -> list[str]:
    """Every metric the online probe logs for these views."""
    return [f"{PROBE_PREFIX}{view}/knn_top1" for view in views] + [f"{PROBE_PREFIX}mean"]


#: per task, the metric that stands for it (first suffix found wins)
_HEADLINE_SUFFIXES = ("linear/top1", "attentive/top1", "top1", "accuracy", "R1", "mAP_0.5", "mAP")
_TASK_ORDER = ("action", "retrieval", "vqa", "localization", "lowshot")


def headline_metrics(keys: list[str], limit: int = 4) -> list[str]:
    """One higher-is-better ``eval/<task>/...`` metric per task (the video reading), action first."""
    by_task: dict[str, list[str]] = {}
    for key in keys:
        parts = key.split("/")
        if len(parts) >= 3 and parts[0] == "eval" and parts[1] != "health":
            by_task.setdefault(parts[1], []).append(key)
    out = []
    rank = {task: i for i, task in enumerate(_TASK_ORDER)}
    for task in sorted(by_task, key=lambda t: (rank.get(t, len(rank)), t)):
        for suffix in _HEADLINE_SUFFIXES:
            found = [k for k in by_task[task] if k.endswith("/" + suffix)]
            if found:
                # the video reading first (action: video before skeleton / fusion; VQA: video before video+skeleton)
                out.append(min(found, key=lambda k: ("skeleton" in k or "fusion" in k, "video" not in k, len(k), k)))
                break
    return out[:limit]
