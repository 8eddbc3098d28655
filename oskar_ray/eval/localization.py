"""Temporal action localization on untrimmed sequences: frozen features + a light per-timestep head.

Runbook::

    result = run_localization(ctx)
    result.metrics["mAP_0.5"]

1. Features: a clip-length window (``modalities.video.frames``) slides over each
   untrimmed sequence with stride :data:`WINDOW_STRIDE` frames; each window goes
   through a frozen target encoder (video; skeleton too, as ``skeleton/...``) exactly like a training clip and
   its pooled feature describes the window centre (one timestep).
2. Head: a 1-D convolution over time (kernel 3: each timestep sees its
   neighbours) classifies every timestep into background or an action class.
   The ``untrimmed`` split (SynthAction's, or ingested with ``--segments``:
   ``segments`` are [start, end] fractions of the sequence, ``segment_labels``
   action ids) is divided in stored order: the first
   :data:`TRAIN_SHARE` of the sequences train the head, the rest are scored.
3. Segments: for each class and each threshold in :data:`THRESHOLDS`, runs of
   timesteps above it become candidate segments scored by their mean
   probability; per-class NMS at tIoU :data:`NMS_TIOU` removes duplicates.
4. mAP at tIoU 0.3/0.5/0.7: per class, detections sorted by score are greedily
   matched to unmatched ground truth; AP is the area under the monotone
   precision envelope; classes without ground truth in the test part are skipped.
5. Intervals: each mAP carries a 95 % percentile bootstrap interval over the test *videos*
   (``<metric>_ci95_lo / _hi``; :data:`MAP_BOOTSTRAP_REPS` resamples, seeded by the eval seed). Greedy
   matching never crosses videos and keeps each video's detections in score order, so which detection is a
   hit does not depend on the other videos: it is computed once, and a resample only re-weights videos
   (:class:`ResampledMAP`) — the mAP of the resampled test set, without re-running the matching.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.encoded_video import ENCODED, clip_plan, video_info
from ..data.preprocess import DatasetMeta
from ..data.readers.clips import DecodeError
from ..probes.heads import single_threaded
from .context import EvalContext, TaskResult
from .features import encode_view, iterate_batches, to_device
from .intervals import bootstrap

#: metric prefix -> view; video is the headline (docs/design.md), skeleton shows what the same head gets from pose
LOC_VIEWS = {"": "target:video", "skeleton/": "target:skeleton"}
SPLIT = "untrimmed"
WINDOW_STRIDE = 4
TRAIN_SHARE = 0.6
TIOUS = (0.3, 0.5, 0.7)
THRESHOLDS = tuple(np.round(np.arange(0.1, 1.0, 0.1), 2))
NMS_TIOU = 0.5
HEAD_STEPS = 300
HEAD_LR = 1e-2
#: bootstrap resamples per mAP interval (intervals.BOOTSTRAP_REPS is 1000): one resample scores every class at
#: every tIoU (~0.5 ms on 40 test videos x 10 classes), so 500 keep both views near half a second; the
#: interval ends then differ from 1000 resamples' by < 0.005 mAP, no more than another seed moves them
MAP_BOOTSTRAP_REPS = 500

Segment = tuple[float, float]
Detection = tuple[object, float, float, float]  # (video key, start, end, score)


# --- metric -------------------------------------------------------------------
def tiou(a: Segment, b: Segment) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def matches(detections: list[Detection], truth: dict[object, list[Segment]],
            threshold: float) -> tuple[list[object], np.ndarray]:
    """(video key, hit) of each detection in score order: greedily matched, within its video, to the unmatched
    ground-truth segment of highest tIoU, a hit at tIoU >= ``threshold``."""
    used = {k: np.zeros(len(v), bool) for k, v in truth.items()}
    keys, hits = [], []
    for key, start, end, _ in sorted(detections, key=lambda d: -d[3]):
        gts = truth.get(key, [])
        overlaps = [tiou((start, end), g) if not used[key][i] else -1.0 for i, g in enumerate(gts)]
        best = int(np.argmax(overlaps)) if overlaps else -1
        hit = best >= 0 and overlaps[best] >= threshold
        if hit:
            used[key][best] = True
        keys.append(key)
        hits.append(hit)
    return keys, np.asarray(hits, dtype=bool)


def _curve(hits: np.ndarray, n_truth: int) -> tuple[np.ndarray, np.ndarray]:
    tp = np.cumsum(hits)
    return tp / np.arange(1, len(hits) + 1), tp / max(n_truth, 1)


def precision_recall(detections: list[Detection], truth: dict[object, list[Segment]],
                     threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each detection (sorted by score) at one tIoU threshold."""
    return _curve(matches(detections, truth, threshold)[1], sum(len(v) for v in truth.values()))


def ap_from_hits(hits: np.ndarray, n_truth: int) -> float:
    """Area under the monotone precision envelope of the detections' hits (in score order)."""
    if len(hits) == 0:
        return 0.0
    precision, recall = _curve(hits, n_truth)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float((envelope * steps).sum())


def average_precision(detections: list[Detection], truth: dict[object, list[Segment]], threshold: float) -> float:
    if not any(truth.values()):
        return float("nan")
    return ap_from_hits(matches(detections, truth, threshold)[1], sum(len(v) for v in truth.values()))


def mean_average_precision(detections: dict[int, list[Detection]], truth: dict[int, dict[object, list[Segment]]],
                           thresholds: tuple[float, ...] = TIOUS) -> dict[float, float]:
    """mAP over the classes that have ground truth, per tIoU threshold."""
    classes = [c for c, t in truth.items() if any(t.values())]
    if not classes:
        raise ValueError("localization: no ground-truth segments to score against")
    return {th: float(np.mean([average_precision(detections.get(c, []), truth[c], th) for c in classes]))
            for th in thresholds}


class ResampledMAP:
    """mAP of a bootstrap resample of the test videos (keys ``0 .. n_videos - 1``): ``self(indices)`` ->
    ``{"mAP_<tIoU>": ..., "mAP": ...}``, equal to :func:`mean_average_precision` on the resampled videos (a video
    drawn k times counts its detections and segments k times; classes without ground truth in the resample are
    skipped), from hits matched once (``__init__``)."""

    def __init__(self, detections: dict[int, list[Detection]], truth: dict[int, dict[object, list[Segment]]],
                 n_videos: int, thresholds: tuple[float, ...] = TIOUS):
        self.thresholds = thresholds
        self.classes = [c for c, t in truth.items() if any(t.values())]
        # per class: ground-truth segments per video; per (class, tIoU): each detection's video and hit
        self.n_truth = {c: np.bincount([k for k, v in truth[c].items() for _ in v], minlength=n_videos)
                        for c in self.classes}
        self.hits = {}
        for c in self.classes:
            for th in thresholds:
                keys, hits = matches(detections.get(c, []), truth[c], th)
                self.hits[c, th] = (np.asarray(keys, dtype=int), hits)
        self.n_videos = n_videos

    def __call__(self, indices: np.ndarray) -> dict[str, float]:
        counts = np.bincount(indices, minlength=self.n_videos)
        maps = {}
        for th in self.thresholds:
            aps = []
            for c in self.classes:
                n_truth = int(counts @ self.n_truth[c])
                if n_truth:
                    keys, hits = self.hits[c, th]
                    aps.append(ap_from_hits(np.repeat(hits, counts[keys]), n_truth))
            maps[f"mAP_{th}"] = float(np.mean(aps)) if aps else float("nan")
        maps["mAP"] = float(np.mean(list(maps.values())))
        return maps


def map_intervals(statistic: Callable[[np.ndarray], dict[str, float]], keys: list[str], n_items: int, seed: int,
                  reps: int = MAP_BOOTSTRAP_REPS) -> dict[str, tuple[float, float]]:
    """A bootstrap interval per key of a statistic that returns them all: each resample is scored once (the
    same seed draws the same resamples for every key)."""
    scored: dict[bytes, dict[str, float]] = {}

    def one(key: str) -> Callable[[np.ndarray], float]:
        def value(indices: np.ndarray) -> float:
            found = scored.get(indices.tobytes())
            if found is None:
                found = scored[indices.tobytes()] = statistic(indices)
            return found[key]
        return value

    return {key: bootstrap(one(key), n_items, seed, reps) for key in keys}


# --- decoding -----------------------------------------------------------------
def segments_from_scores(scores: np.ndarray, times: np.ndarray, half_width: float) -> list[tuple[float, float, float]]:
    """Candidate (start, end, score) from runs above each threshold of one class's per-timestep scores."""
    found = []
    for threshold in THRESHOLDS:
        above = np.concatenate([[False], scores >= threshold, [False]])
        edges = np.flatnonzero(np.diff(above.astype(int)))
        for s, e in zip(edges[::2], edges[1::2], strict=True):
            start, end = max(0.0, times[s] - half_width), min(1.0, times[e - 1] + half_width)
            found.append((float(start), float(end), float(scores[s:e].mean())))
    return nms(found)


def nms(segments: list[tuple[float, float, float]], threshold: float = NMS_TIOU) -> list[tuple[float, float, float]]:
    kept: list[tuple[float, float, float]] = []
    for seg in sorted(segments, key=lambda s: -s[2]):
        if all(tiou(seg[:2], k[:2]) < threshold for k in kept):
            kept.append(seg)
    return kept


# --- features and head ----------------------------------------------------------
def _windows(meta: DatasetMeta, clip_len: int, stride: int, cfg):
    if meta.video_storage == ENCODED:
        return _encoded_windows(cfg, stride)
    frame_bytes = meta.height * meta.width * 3
    joint_bytes = meta.joints * 3 * 4

    def expand(row: dict) -> list[dict]:
        if not row.get("video"):
            return []
        frames = len(row["video"]) // frame_bytes
        starts = range(0, max(frames - clip_len, 0) + 1, stride)
        out = []
        for s in starts:
            e = min(s + clip_len, frames)
            skel = row.get("skeleton") or b""
            out.append({**row, "video": row["video"][s * frame_bytes:e * frame_bytes],
                        "skeleton": skel[s * joint_bytes:e * joint_bytes] if skel else skel,
                        "_centre": (s + e) / 2 / frames, "_frames": frames})
        return out

    return expand


def _encoded_windows(cfg, stride: int):
    """Windows over an encoded video: ``clip`` = [start frame, -1 (centre view)], starts ``stride`` x
    ``data.frame_step`` frames apart; the video's frames stay encoded (each window decodes its own)."""
    plan = clip_plan(cfg)

    def expand(row: dict) -> list[dict]:
        if not row.get("video"):
            return []
        try:
            frames = int(video_info(row["attributes"])["frames"])
        except DecodeError:
            return []  # undecodable metadata: the sequence has no timestep (localization reads what decodes)
        starts = range(0, max(frames - plan.span, 0) + 1, stride * plan.step)
        # view -1: the centre crop; the centre time of what the window covers (all of a short video)
        return [{**row, "clip": [s, -1], "_centre": (s + min(s + plan.span, frames)) / 2 / frames, "_frames": frames}
                for s in starts]

    return expand


@torch.no_grad()
def sequence_features(ctx: EvalContext, view: str = "target:video"):
    """Per sequence: (features (T, D), centre times (T,), segments, labels)."""
    source = ctx.cache.plan.source(SPLIT)  # the stored split (and rows) behind the logical name
    meta = DatasetMeta.load(ctx.dataset, source.stored)
    clip_len = ctx.cfg.modalities["video"].frames
    expand = _windows(meta, clip_len, WINDOW_STRIDE, ctx.cfg)
    columns = [*meta.read_columns, "segment_labels"]
    seqs: dict[str, dict] = defaultdict(lambda: {"feats": [], "times": []})
    ctx.model.eval()
    device = next(ctx.model.parameters()).device
    for batch, rows in iterate_batches(ctx.dataset, source, ctx.cfg, ctx.batch_size, expand, columns):
        pooled, _, _ = encode_view(ctx.model, to_device(batch, device), view)
        pooled = pooled.float().cpu()
        for row, feat in zip(rows, pooled, strict=True):
            seq = seqs[row["id"]]
            seq["feats"].append(feat)
            seq["times"].append(row["_centre"])
            seq["half"] = WINDOW_STRIDE * (ctx.cfg.data.frame_step if meta.video_storage == ENCODED else 1) / 2 \
                / row["_frames"]
            flat = row.get("segments") or []
            seq["segments"] = [(flat[i], flat[i + 1]) for i in range(0, len(flat) - 1, 2)]
            seq["labels"] = list(row.get("segment_labels") or [])
    return [{**s, "feats": torch.stack(s["feats"]).float(), "times": np.asarray(s["times"])} for s in seqs.values()]


def timestep_labels(times: np.ndarray, segments: list[Segment], labels: list[int], background: int) -> torch.Tensor:
    out = torch.full((len(times),), background, dtype=torch.long)
    for (start, end), label in zip(segments, labels, strict=False):
        out[torch.from_numpy((times >= start) & (times < end))] = int(label)
    return out


class TimestepHead(nn.Module):
    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, n_classes + 1, kernel_size=3, padding=1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, C + 1)
        return self.conv(self.norm(feats).transpose(1, 2)).transpose(1, 2)


@single_threaded
def train_head(seqs: list[dict], n_classes: int, seed: int) -> TimestepHead:
    torch.manual_seed(seed)
    feats = nn.utils.rnn.pad_sequence([s["feats"] for s in seqs], batch_first=True)
    labels = nn.utils.rnn.pad_sequence([s["target"] for s in seqs], batch_first=True, padding_value=-100)
    head = TimestepHead(feats.shape[-1], n_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=HEAD_LR, weight_decay=0.01)
    for _ in range(HEAD_STEPS):
        opt.zero_grad()
        F.cross_entropy(head(feats).flatten(0, 1), labels.flatten(), ignore_index=-100).backward()
        opt.step()
    return head


def detect(head: TimestepHead, seqs: list[dict], n_classes: int) -> dict[int, list[Detection]]:
    detections: dict[int, list[Detection]] = defaultdict(list)
    with torch.no_grad():
        for i, seq in enumerate(seqs):
            probs = head(seq["feats"][None])[0].softmax(-1).numpy()
            for c in range(n_classes):
                for start, end, score in segments_from_scores(probs[:, c], seq["times"], seq["half"]):
                    detections[c].append((i, start, end, score))
    return detections


def run_localization(ctx: EvalContext) -> TaskResult:
    """``mAP_<tIoU>`` on video features (the headline) and ``skeleton/mAP_<tIoU>`` on skeleton windows."""
    ctx.require_split(SPLIT, "localization")
    stored = ctx.cache.plan.source(SPLIT).stored
    if not ctx.manifest["splits"][stored].get("has_segments"):
        raise ValueError(f"{ctx.dataset}/manifest.json: split {stored!r} has no temporal segments, so there is "
                         f"nothing to localize (ingest it with --segments)")
    result = TaskResult()
    for prefix, view in LOC_VIEWS.items():
        if view not in ctx.cache.views:
            continue
        metrics, pr, intervals = _localize(ctx, view)
        for key, value in metrics.items():
            result.add(prefix + key, value, interval=intervals.get(key))
        result.plots.setdefault("pr", pr)  # the first (video) view is plotted
    return result


def _localize(ctx: EvalContext, view: str) -> tuple[dict[str, float], dict, dict[str, tuple[float, float]]]:
    n_classes = len(ctx.vocab("actions"))
    seqs = sequence_features(ctx, view)
    if len(seqs) < 2:
        raise ValueError(f"{ctx.dataset}: split {SPLIT!r} needs at least 2 sequences (train + test part)")
    for seq in seqs:
        seq["target"] = timestep_labels(seq["times"], seq["segments"], seq["labels"], n_classes)
    cut = min(max(1, int(len(seqs) * TRAIN_SHARE)), len(seqs) - 1)
    head = train_head(seqs[:cut], n_classes, ctx.seed)
    test = seqs[cut:]
    detections = detect(head, test, n_classes)
    truth: dict[int, dict[object, list[Segment]]] = defaultdict(lambda: defaultdict(list))
    for i, seq in enumerate(test):
        for segment, label in zip(seq["segments"], seq["labels"], strict=False):
            truth[int(label)][i].append(segment)
    maps = mean_average_precision(detections, truth)
    # "@" would become "_" in MLflow keys anyway: one spelling everywhere
    metrics = {f"mAP_{th}": value for th, value in maps.items()}
    metrics["mAP"] = float(np.mean(list(maps.values())))
    intervals = map_intervals(ResampledMAP(detections, truth, len(test)), list(metrics), len(test), ctx.seed)
    pooled = [((c, d[0]), *d[1:]) for c, dets in detections.items() for d in dets]
    pooled_truth = {(c, k): v for c, t in truth.items() for k, v in t.items()}
    precision, recall = precision_recall(pooled, pooled_truth, 0.5)
    return metrics, {"precision": precision.tolist(), "recall": recall.tolist(), "tiou": 0.5}, intervals
