"""OSKAR: predict the EMA target encoders' latents of masked tokens from a fixed budget.

>>> from oskar_ray.config import load_config
>>> from oskar_ray.model import Oskar
>>> model = Oskar(load_config("experiments/configs/tiny.yaml"))
>>> out = model(model.example_batch(8))
>>> out["loss"].backward(); model.update_targets(0.996)

One step:
1. token budgets: ``input_index``/``target_index`` from the batch (drawn in the
   data path) or drawn here by :class:`TokenBudgetSampler`;
2. the fusion encoder sees exactly ``input_tokens`` tokens per sample;
3. each modality's target encoder (EMA copy, no grad) encodes that modality's
   *full* token set alone — only for samples that have targets in it (all samples
   for a clip-level contrast's target; a modality nothing reads is not encoded) —
   and the outputs at the target tokens are layer-normed;
4. the predictor maps fused tokens + target slots to predicted latents;
5. MSE (or L1) per token, averaged per modality, then across modalities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn

from ..config import OskarConfig
from .align import CrossModalAlignment, load_legacy_alignment, without_queue_buffers
from .budget import Layout, TokenBudgetSampler, batch_layout, build_modalities, presence
from .ema import ema_update
from .encoder import Encoder
from .predictor import Predictor
from .slot_statistics import SlotStatistics
from .variance_covariance import variance_covariance_terms


class Oskar(nn.Module):
    def __init__(self, cfg: OskarConfig):
        super().__init__()
        self.cfg = cfg
        self.modalities = build_modalities(cfg)
        names = tuple(self.modalities)
        self.sampler = TokenBudgetSampler(cfg)
        self._rng = np.random.default_rng(cfg.train.seed)
        self.fusion_encoder = Encoder(self.modalities, cfg.model)
        if cfg.ema.per_modality:
            targets = {n: self.fusion_encoder.restricted_copy((n,)) for n in names}
        else:
            shared = self.fusion_encoder.restricted_copy(names)
            targets = dict.fromkeys(names, shared)
        self.target_encoders = nn.ModuleDict(targets)
        if cfg.predictor.per_modality:
            self.predictor = nn.ModuleDict({n: Predictor(cfg.model.dim, cfg.predictor) for n in names})
        else:
            self.predictor = Predictor(cfg.model.dim, cfg.predictor)
        self._ema_pairs = self._pair_target_parameters()
        # one term per aligned target modality; a video-only baseline keeps the config's align_weight but
        # has no second modality to align to
        self.alignment = nn.ModuleDict({
            name: CrossModalAlignment(cfg.model.dim, cfg.model.align_temperature, cfg.model.align_queue)
            for name in cfg.model.align_to if self._align_weight(name) and name in names
            and cfg.model.align_from in names})
        if cfg.model.target_norm == "slot":
            self.target_stats = SlotStatistics(sum(m.num_tokens for m in self.modalities.values()),
                                               cfg.model.dim, cfg.model.target_stats_momentum)

    # --- training ---------------------------------------------------------------
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        layout = batch_layout(self.modalities, batch)
        input_index, target_index = self._indices(batch, layout)
        tokens = self.fusion_encoder.tokenize(batch, layout.names)
        fused = self.fusion_encoder(_gather(tokens, input_index))
        target_modality = self._modality_ids(layout, target_index)
        aligned_to = self._alignment_targets(layout)
        with torch.no_grad():
            targets, aligned = self._targets(batch, layout, target_index, target_modality, aligned_to)
        slots = _select_rows(self._slot_embeddings(layout), target_index)
        prediction = self._predict(fused, slots, target_modality, layout)
        out = self._loss(prediction, targets, target_modality, layout, input_index, target_index)
        for name in aligned_to:
            out = self._add_alignment(out, name, batch, fused, layout, input_index, aligned[name])
        return self._add_variance_covariance(out, fused, layout, input_index)

    @torch.no_grad()
    def update_targets(self, momentum: float | dict[str, float]) -> None:
        """EMA step: ``target = m * target + (1 - m) * fusion`` (per modality if a dict)."""
        for name, (targets, sources) in self._ema_pairs.items():
            m = momentum[name] if isinstance(momentum, dict) else momentum
            ema_update(targets, sources, float(m))

    # --- features ---------------------------------------------------------------
    @torch.no_grad()
    def encode_tokens(
        self, batch: dict, modalities: list[str] | None = None, encoder: str = "target"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token features ``(B, N, D)`` of the full (unmasked) sequences + validity ``(B, N)``.

        ``encoder="target"``: each modality through its target encoder alone,
        concatenated; ``"fusion"``: all requested modalities through the fusion
        encoder together.
        """
        names = self._requested(batch, modalities)
        valid = self._valid(batch, names)
        if encoder == "fusion":
            tokens = self.fusion_encoder.tokenize(batch, names)
            return self.fusion_encoder(tokens, valid), valid
        if encoder != "target":
            raise ValueError(f"encoder must be 'target' or 'fusion', got {encoder!r}")
        feats = [self._target_features(batch, n) for n in names]
        return torch.cat(feats, dim=1), valid

    @torch.no_grad()
    def encode(self, batch: dict, modalities: list[str] | None = None, encoder: str = "target") -> torch.Tensor:
        """Pooled features ``(B, D)``: mean over each modality's valid tokens, then
        over the modalities the sample carries (so long modalities do not dominate)."""
        names = self._requested(batch, modalities)
        tokens, valid = self.encode_tokens(batch, list(names), encoder)
        return pool_by_modality(tokens, valid, [self.modalities[n].num_tokens for n in names])

    # --- utilities -------------------------------------------------------------
    def example_batch(
        self, batch_size: int, present: dict[str, object] | None = None, seed: int = 0
    ) -> dict:
        """A structured random batch with every enabled modality (tests, benchmarks)."""
        generator = torch.Generator().manual_seed(seed)
        batch: dict = {}
        for modality in self.modalities.values():
            batch.update(modality.example(batch_size, generator))
        marks = {n: torch.ones(batch_size, dtype=torch.bool) for n in self.modalities}
        for name, value in (present or {}).items():
            if name not in marks:
                raise ValueError(f"present: unknown modality {name!r} (enabled: {list(marks)})")
            marks[name] = torch.as_tensor(np.asarray(value, dtype=bool))
            if marks[name].shape != (batch_size,):
                raise ValueError(f"present[{name!r}] must have {batch_size} entries")
        for name, mark in marks.items():
            self.modalities[name].blank(batch, ~mark)
        batch["present"] = marks
        device = next(self.parameters()).device
        return move_batch(batch, device)

    def save_weights(self, path: str | Path) -> None:
        save_model(self, str(path))

    def load_weights(self, path: str | Path) -> None:
        try:
            missing, unexpected = load_model(self, str(path), strict=False)
            missing, unexpected = load_legacy_alignment(self.alignment, str(path), missing, unexpected)
            missing = without_queue_buffers(missing)
        except RuntimeError as err:  # shape mismatch
            raise ValueError(f"{path}: weights do not match this config: {err}") from None
        if missing or unexpected:
            raise ValueError(f"{path}: weights do not match this config "
                             f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")

    # --- internals --------------------------------------------------------------
    def _indices(self, batch: dict, layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
        if "input_index" not in batch:
            drawn = self.sampler.sample_batch(batch, self._rng)
            batch = {**batch, **drawn}
        device = self.fusion_encoder.transformer.norm.weight.device
        budgets = {"input_index": self.cfg.budget.input_tokens, "target_index": self.cfg.budget.target_tokens}
        indices = []
        for key, budget in budgets.items():
            index = torch.as_tensor(batch[key], device=device)
            if index.dim() != 2 or index.shape[1] != budget or int(index.max()) >= layout.offsets[-1]:
                raise ValueError(
                    f"batch[{key!r}] has shape {tuple(index.shape)} (max {int(index.max())}) but the config "
                    f"asks for {budget} per sample over {int(layout.offsets[-1])} tokens of {layout.names}: "
                    f"masks drawn for another config?"
                )
            indices.append(index)
        return indices[0], indices[1]

    def _modality_ids(self, layout: Layout, index: torch.Tensor) -> torch.Tensor:
        bounds = torch.as_tensor(layout.offsets[1:-1], device=index.device)
        return torch.bucketize(index, bounds, right=True)

    def _slot_embeddings(self, layout: Layout) -> torch.Tensor:
        return torch.cat([self.fusion_encoder.tokenizers[n].slot_embedding() for n in layout.names])

    def _targets(self, batch, layout, target_index, target_modality,
                 every_row: tuple[str, ...] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the normalised targets ``(B, T, D)``; raw target-encoder features ``(B, N_m, D)`` of each ``every_row``
        modality, zero where a clip lacks it). A target encoder runs on its modality's full token set, only for
        the rows where it has targets — or, in ``every_row``, where it is present — so not at all if nothing
        reads it. Layer norm and slot statistics act per token: only the ``T`` targets go through them."""
        batch_size, dim = target_index.shape[0], self.cfg.model.dim
        targets = torch.zeros(batch_size, target_index.shape[1], dim, device=target_index.device)
        features = {n: torch.zeros(batch_size, layout.sizes[layout.names.index(n)], dim, device=targets.device)
                    for n in every_row}
        for m, name in enumerate(layout.names):
            mine = target_modality == m
            wanted = mine.any(dim=1)
            if name in every_row:  # a clip-level contrast reads every clip that carries the modality
                wanted |= torch.as_tensor(presence(batch, name, batch_size), device=wanted.device)
            rows = wanted.nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            feats = self._target_features({k: batch[k][rows] for k in self.modalities[name].batch_keys}, name).float()
            if name in every_row:
                features[name][rows] = feats
            local = (target_index[rows] - int(layout.offsets[m])).clamp(0, layout.sizes[m] - 1)
            targets[rows] = torch.where(mine[rows, :, None], _gather(feats, local), targets[rows])
        normed = F.layer_norm(targets, (dim,))
        if self.cfg.model.target_norm == "slot":
            slots = self._slot_positions(layout).to(target_index.device)[target_index]
            normed = self.target_stats(normed, slots, self.training)
        return normed, features

    def _slot_positions(self, layout: Layout) -> torch.Tensor:
        """Each batch token's row in the statistics (all enabled modalities, config order)."""
        starts = np.concatenate([[0], np.cumsum([m.num_tokens for m in self.modalities.values()])])
        rows = {n: starts[i] for i, n in enumerate(self.modalities)}
        return torch.cat([torch.arange(rows[n], rows[n] + s) for n, s in zip(layout.names, layout.sizes,
                                                                             strict=True)])

    def _target_features(self, batch: dict, name: str) -> torch.Tensor:
        encoder = self.target_encoders[name]
        valid = encoder.valid_mask(batch, (name,))
        return encoder(encoder.tokenize(batch, (name,)), valid)

    def _predict(self, fused, slots, target_modality, layout) -> torch.Tensor:
        if isinstance(self.predictor, Predictor):
            return self.predictor(fused, slots)
        prediction = torch.zeros_like(slots)
        for m, name in enumerate(layout.names):
            mine = target_modality == m
            if not mine.any():
                continue
            query_mask = mine[:, :, None] & mine[:, None, :]
            query_mask |= torch.eye(mine.shape[1], dtype=torch.bool, device=mine.device)
            out = self.predictor[name](fused, slots, query_mask)
            prediction = torch.where(mine[..., None], out, prediction)
        return prediction

    def _loss(self, prediction, targets, target_modality, layout, input_index, target_index) -> dict:
        diff = prediction.float() - targets.float()
        error = diff.abs().mean(-1) if self.cfg.model.loss == "l1" else diff.pow(2).mean(-1)
        n_mod = len(layout.names)
        flat = target_modality.flatten()
        sums = torch.zeros(n_mod, device=error.device).index_add(0, flat, error.flatten())
        counts = torch.bincount(flat, minlength=n_mod).to(error.dtype)
        per_modality = sums / counts.clamp(min=1)
        has = counts > 0
        out = {"loss": per_modality[has].mean()}
        for m, name in enumerate(layout.names):
            if has[m]:
                out[f"loss/{name}"] = per_modality[m].detach()
        batch_size = input_index.shape[0]
        out["n_input_tokens"] = torch.full((batch_size,), input_index.shape[1], device=error.device)
        out["n_target_tokens"] = torch.full((batch_size,), target_index.shape[1], device=error.device)
        return out

    def _align_weight(self, name: str) -> float:
        return self.cfg.model.align_weights.get(name, self.cfg.model.align_weight)

    def _alignment_targets(self, layout: Layout) -> tuple[str, ...]:
        """The modalities whose target features a clip-level term reads in this batch."""
        if self.cfg.model.align_from not in layout.names:
            return ()
        return tuple(n for n in self.alignment if n in layout.names)

    def _add_alignment(self, out: dict, name: str, batch: dict, fused: torch.Tensor, layout: Layout,
                       input_index: torch.Tensor, target: torch.Tensor) -> dict:
        """Pooled ``align_from`` context must pick out its own clip's pooled ``name`` target features. A clip
        that feeds tokens of ``name`` in is left out of this term: its context could read the answer from them
        through attention instead of from ``align_from`` (docs/design.md, "Clip-level contrast"). ``target``:
        ``(B, N, D)`` raw target-encoder features of ``name``."""
        m = self.cfg.model
        input_modality = self._modality_ids(layout, input_index)
        source = input_modality == layout.names.index(m.align_from)
        k = layout.names.index(name)
        valid = self.target_encoders[name].valid_mask(batch, (name,))
        if valid is None:
            valid = torch.ones(target.shape[:2], dtype=torch.bool, device=target.device)
        present = torch.as_tensor(presence(batch, name, len(target)), device=valid.device)
        valid = valid & present[:, None]  # absent clips drop out
        hidden = ~(input_modality == k).any(1)
        term = self.alignment[name](pool_by_modality(fused, source, [source.shape[1]]),
                                    pool_by_modality(target.float(), valid, [valid.shape[1]]),
                                    source.any(1) & valid.any(1) & hidden)
        if term is not None:
            out["loss"] = out["loss"] + self._align_weight(name) * term
            out[f"loss/align/{name}"] = term.detach()
            out["loss/align"] = out.get("loss/align", 0.0) + term.detach()  # summed over the aligned targets
        return out

    def _add_variance_covariance(self, out: dict, fused: torch.Tensor, layout: Layout,
                                 input_index: torch.Tensor) -> dict:
        var_weight, cov_weight = self.cfg.model.var_weight, self.cfg.model.cov_weight
        if not (var_weight or cov_weight):
            return out
        terms = variance_covariance_terms(fused, self._modality_ids(layout, input_index), len(layout.names))
        out["loss"] = out["loss"] + var_weight * terms["var"] + cov_weight * terms["cov"]
        out["reg/var"], out["reg/cov"] = terms["var"].detach(), terms["cov"].detach()
        return out

    def _requested(self, batch: dict, modalities: list[str] | None) -> tuple[str, ...]:
        names = batch_layout(self.modalities, batch).names
        if modalities is None:
            return names
        missing = [m for m in modalities if m not in names]
        if missing:
            raise ValueError(f"modalities {missing} are not in the batch (it has {list(names)})")
        return tuple(n for n in names if n in modalities)

    def _valid(self, batch: dict, names: tuple[str, ...]) -> torch.Tensor:
        parts = []
        for name in names:
            modality = self.modalities[name]
            size = len(batch[modality.batch_keys[0]])
            present = presence(batch, name, size)
            parts.append(torch.as_tensor(modality.available(batch_to_numpy(batch, modality), present)))
        device = self.fusion_encoder.transformer.norm.weight.device
        return torch.cat(parts, dim=1).to(device)

    def _pair_target_parameters(self) -> dict[str, tuple[list, list]]:
        sources = dict(self.fusion_encoder.named_parameters())
        pairs, seen = {}, set()
        for name, encoder in self.target_encoders.items():
            if id(encoder) in seen:
                continue
            seen.add(id(encoder))
            named = list(encoder.named_parameters())
            pairs[name] = ([p for _, p in named], [sources[n] for n, _ in named])
        return pairs


def pool_by_modality(tokens: torch.Tensor, valid: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """``(B, N, D)`` → ``(B, D)``: mean over each modality's valid tokens (``sizes`` split N),
    then over the modalities the sample carries."""
    pooled, weights = [], []
    for part, mask in zip(tokens.split(sizes, 1), valid.split(sizes, 1), strict=True):
        count = mask.sum(1, keepdim=True)
        pooled.append((part * mask[..., None]).sum(1) / count.clamp(min=1))
        weights.append((count > 0).float())
    weight = torch.stack(weights)
    return (torch.stack(pooled) * weight).sum(0) / weight.sum(0).clamp(min=1)


def _select_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for an ``(N, D)`` table. Advanced indexing's backward (index_put_ with
    accumulate) sums repeated rows in thread order on CPU, so two same-seed runs drifted apart
    (1e-7 per step, several probe points after 1200 steps); index_select's backward does not."""
    return table.index_select(0, index.reshape(-1)).view(*index.shape, table.shape[-1])


def _gather(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.gather(tokens, 1, index[..., None].expand(-1, -1, tokens.shape[-1]))


def batch_to_numpy(batch: dict, modality) -> dict:
    return {k: batch[k].detach().cpu().numpy() if hasattr(batch[k], "detach") else batch[k]
            for k in modality.batch_keys}


def move_batch(batch: dict, device: torch.device | str) -> dict:
    """Recursively move tensors (incl. the nested ``present`` dict) to ``device``."""
    if isinstance(batch, dict):
        return {k: move_batch(v, device) for k, v in batch.items()}
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch
