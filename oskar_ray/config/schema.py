"""The config schema: one dataclass per section, defaults in the fields (see ``oskar_ray.config``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..modalities import BUILTIN_MODALITIES, ModalityConfig, modality_class


@dataclass
class ModelConfig:
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    #: "mse" or "l1" between predicted and target features
    loss: str = "mse"
    #: "layer": layer-normed target latents (I-JEPA); "slot": layer norm, then each target slot
    #: (modality token position) centred and scaled by running statistics, so the part of a
    #: target that only encodes *where* the token is cannot be predicted without the inputs
    target_norm: str = "layer"
    #: momentum of the running per-slot statistics used by target_norm="slot"
    target_stats_momentum: float = 0.9
    #: weights of the anti-collapse terms on pooled context features (model/variance_covariance.py); 0 = off
    var_weight: float = 0.0
    cov_weight: float = 0.0
    #: weight of the clip-level cross-modal contrastive terms (model/align.py): pooled context tokens of
    #: ``align_from`` must pick out their own clip's pooled target features of each ``align_to`` modality in
    #: the batch (one term and one pair of heads per target modality); 0 = off
    align_weight: float = 0.0
    align_from: str = "video"
    align_to: list[str] = field(default_factory=lambda: ["skeleton"])
    #: per-target weights that replace ``align_weight`` for that target (e.g. ``{text: 5}``)
    align_weights: dict[str, float] = field(default_factory=dict)
    align_temperature: float = 0.1
    #: target features of this many past clips join each contrast's negatives (model/align.py; 0: the batch only)
    align_queue: int = 0


@dataclass
class PredictorConfig:
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    #: "cross": queries self-attend and cross-attend to the fused tokens;
    #: "concat": one self-attention over [fused tokens; queries] (I-JEPA style)
    kind: str = "cross"
    #: one predictor per modality instead of one shared predictor
    per_modality: bool = False


@dataclass
class BudgetConfig:
    input_tokens: int = 64
    target_tokens: int = 32
    input_alpha: float = 1.0
    target_alpha: float = 1.0
    #: share of each sample's target allotment routed away from its input modalities
    cross_modal_share: float = 0.0
    #: a clip-time span that is a target in one modality is not an input in another
    exclusive: bool = False
    #: resolution of clip time used by exclusivity
    time_bins: int = 8
    #: per-modality weights on the Dirichlet shares ({} = all 1); 0 keeps a modality out of
    #: that budget unless a sample has nothing else (e.g. inputs {video: 1, skeleton: 0, text: 0}
    #: with targets {skeleton: 1} is video -> skeleton: docs/design.md, "Cross-modal routing")
    input_weights: dict[str, float] = field(default_factory=dict)
    target_weights: dict[str, float] = field(default_factory=dict)


@dataclass
class EmaConfig:
    start: float = 0.996
    end: float = 1.0
    #: "cosine" | "linear" | "constant" from start to end over train.steps
    schedule: str = "cosine"
    #: one target encoder per modality (else one shared target encoder). The copies follow one fusion encoder:
    #: under the same schedule their transformer blocks stay identical, so give modalities their own schedule
    #: (below) for copies that differ
    per_modality: bool = True
    #: per-modality momentum schedule (only with per_modality): start, end and kind override ema.start / end /
    #: schedule for the named modality, e.g. {skeleton: 0.99}
    modality_start: dict[str, float] = field(default_factory=dict)
    modality_end: dict[str, float] = field(default_factory=dict)
    modality_schedule: dict[str, str] = field(default_factory=dict)


@dataclass
class DataConfig:
    #: dataset directory (manifest.json + Parquet shards) or URI; "" = built-in example stream
    path: str = ""
    train_split: str = "pretrain"
    val_split: str = "val"
    #: "clip" (per-clip mean/std: removes the colour shortcut) or "dataset"
    video_norm: str = "clip"
    augment: bool = True
    #: encoded videos (``ingest --video-storage encoded``): a clip is ``modalities.video.frames`` frames this many
    #: source frames apart, its start drawn per visit when training (oskar_ray/data/readers/clips.py)
    frame_step: int = 4
    #: random resized crop per training visit: area share and aspect (w/h) ranges (V-JEPA: [0.3, 1], [0.75, 1.35])
    crop_scale: list[float] = field(default_factory=lambda: [0.3, 1.0])
    crop_aspect: list[float] = field(default_factory=lambda: [0.75, 1.35])
    #: horizontal flips swap left and right: off unless no label or caption says which hand or side
    hflip: bool = False
    #: CPUs per Ray Data task of an encoded split: decoding is a core's work, so fractional tasks (cpus_per_task,
    #: sized for raw 32 x 32 clips) would put many decoders on each core (experiments/bench_decode.py)
    decode_cpus_per_task: float = 1.0
    shuffle_buffer: int = 256
    #: CPUs per Ray Data preprocessing task (fractions fit 2-core laptops)
    cpus_per_task: float = 0.25
    #: Ray Data's CPU budget for a run's preprocessing, in logical CPUs (0: uncapped, Ray decides; a sweep
    #: trial left at 0 takes 2 tasks' worth). A small dataset streams fastest uncapped: its whole stream is
    #: done early and the trainer then has the cores (docs/results.md, "dataset size")
    max_cpus: float = 0.0
    #: object-store memory (MB) a run's stream may hold in flight (0: each worker's shuffle buffer plus 8 training
    #: batches, at least 2 blocks per data task, at most a quarter of the object store;
    #: oskar_ray/data/pipeline.py stream_memory_mb); a budget above the object store, or under one 16 MB block, is
    #: refused at start
    max_memory_mb: float = 0.0
    #: tasks in flight per data operator, reads and preprocessing (0: one per core on a local Ray, Ray decides on
    #: a cluster; oskar_ray/data/pipeline.py data_tasks)
    max_tasks: int = 0
    prefetch_batches: int = 2
    #: size of the built-in benchmark synthesised when ``path`` is empty (labelled splits: shares of it)
    synth_samples: int = 2000
    #: its unlabelled pretrain split: large enough that a default run or sweep trial streams about one epoch
    #: (a stream of many epochs once started them all at once, 75-95 s to the first batch for 5; since 2026-12-06
    #: its epochs run in order, docs/results.md "Sixth pass")
    synth_pretrain_samples: int = 5000


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 30
    weight_decay: float = 0.04
    weight_decay_end: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    num_workers: int = 1
    cpus_per_worker: float = 0.5
    use_gpu: bool = False
    #: "fp32", "bf16" (autocast, fp32 master weights; GPU, or a CPU with bf16 matmul units) or "auto" (bf16
    #: where it is faster: a GPU or a CPU with bf16 matmul units; train/step.py::resolved_precision)
    precision: str = "fp32"
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    #: automatic restarts from the last checkpoint after a worker failure
    max_failures: int = 2
    log_every: int = 10
    seed: int = 0
    #: torch intra-op threads per worker; 0 leaves torch's default
    threads: int = 0
    output_dir: str = "runs"


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=lambda: ["action", "retrieval", "vqa", "localization", "health"])
    rankme_every: int = 100
    knn_k: int = 20
    probe_epochs: int = 60
    #: action protocols per view: frozen probes (attentive / linear / kNN), end-to-end fine-tuning of the
    #: pretrained encoder (finetune) and the same network trained from random init (supervised); a sweep
    #: sizes its per-trial eval with this
    action_protocols: list[str] = field(default_factory=lambda: ["attentive", "linear", "knn", "finetune",
                                                                 "supervised"])
    #: fine-tuning and supervised-from-scratch schedule (oskar_ray/eval/finetune.py): passes over the labelled
    #: clips turned into steps, clamped to [min, max] (0 = neither end-to-end protocol runs)
    finetune_epochs: float = 10.0
    finetune_min_steps: int = 60
    finetune_max_steps: int = 400
    finetune_batch_size: int = 32
    #: peak learning rate of the head; encoder block i of depth gets finetune_layer_decay ** (depth - i) of it
    finetune_lr: float = 3.0e-4
    finetune_layer_decay: float = 0.75
    #: training from scratch: every layer at this peak learning rate
    supervised_lr: float = 1.0e-3
    finetune_warmup: float = 0.1
    #: early stopping: this fraction of the labelled training clips per class is held out and scored every
    #: tenth of the schedule; the best step is kept; training stops after finetune_patience scores without a
    #: gain (10: the whole schedule — gains come late, under the cosine tail; 4 stopped every run at 40 %)
    finetune_holdout: float = 0.1
    finetune_patience: int = 10
    #: a score counts as a gain when this many more held-out clips are right (one clip flipping is noise)
    finetune_min_gain: int = 2
    #: clip readings the VQA head is trained on: "video" (the headline) and "video+skeleton"
    vqa_views: list[str] = field(default_factory=lambda: ["video", "video+skeleton"])
    batch_size: int = 64
    #: encoded videos: each clip is read as this many windows spread over it x this many crops along its long side;
    #: pooled features and tokens are averaged over them (V-JEPA reads 8 x 3 on Kinetics but averages the probe's
    #: per-clip predictions instead: not the same protocol)
    video_segments: int = 1
    video_views: int = 1
    #: feature std below this for `collapse_patience` evaluations raises the alarm
    collapse_std: float = 1e-3
    collapse_patience: int = 3
    collapse_fatal: bool = False
    #: every this many steps rank 0 scores a leave-one-out kNN probe on held-out labelled clips
    #: (``probe/<view>/knn_top1``, the sweeps' early-stopping signal); 0 = off
    online_probe_every: int = 0
    online_probe_samples: int = 256
    online_probe_k: int = 10
    #: views it scores: video / skeleton (target encoders), fusion (video + skeleton)
    online_probe_views: list[str] = field(default_factory=lambda: ["video", "skeleton", "fusion"])
    #: stored splits the probes train and score on (the validation split is ``data.val_split``)
    train_split: str = "train"
    test_split: str = "test"
    #: a dataset without the validation split gets one carved from train: this fraction per class, seeded
    #: (oskar_ray/data/splits.py); low-shot subsets are drawn the same way, ``lowshot_percents`` % of train
    val_fraction: float = 0.1
    split_seed: int = 0
    lowshot_percents: list[float] = field(default_factory=lambda: [1.0, 10.0, 100.0])


@dataclass
class TrackingConfig:
    experiment: str = "oskar"
    #: "" → $MLFLOW_TRACKING_URI, else a SQLite store in the working directory
    uri: str = ""
    run_name: str = ""
    #: auto | always | never — Ray workers log through an actor on the driver's node (oskar_ray/relay.py);
    #: auto: when the driver joined a cluster ($RAY_ADDRESS) and the URI only works on its node
    relay: str = "auto"


def default_modalities() -> dict[str, ModalityConfig]:
    return {name: modality_class(name).config_class() for name in BUILTIN_MODALITIES}


@dataclass
class OskarConfig:
    #: modules imported before the config is read (and in every Ray worker that reads it): each may
    #: register a modality (oskar_ray/modalities/base.py), which ``modalities:`` can then name
    plugins: list[str] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    modalities: dict[str, ModalityConfig] = field(default_factory=default_modalities)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @property
    def enabled_modalities(self) -> list[str]:
        return [name for name, m in self.modalities.items() if m.enabled]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"budget.input_tokens": 64, ...}`` — MLflow params, sweep keys."""
        return _flatten(self.to_dict())


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat
