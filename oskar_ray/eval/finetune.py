"""End-to-end fine-tuning: a copy of the encoder + a linear head, a few epochs.

Runbook::

    res = finetune(model, "target:video", "data/synth", cfg, train_split="train", test_split="test",
                   n_classes=10, epochs=3)
    res.top1, res.top5

The pretrained model is never modified: the encoder of the view (the target
encoder of one modality, or the fusion encoder) is deep-copied and unfrozen.
The encoder gets a 10x smaller learning rate than the fresh head,
so a few epochs adapt it without washing out what pretraining learned.
Training batches use the training preprocessing (augmentation, random caption).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data.pipeline import iterate_local
from ..data.splits import SplitPlan
from ..model.oskar import pool_by_modality
from ..probes.heads import ProbeResult, topk_accuracy
from ..probes.views import parse_view
from .features import iterate_batches, to_device

FINETUNE_LR = 1e-3
ENCODER_LR_SCALE = 0.1


class FineTuned(nn.Module):
    def __init__(self, model, view: str, n_classes: int):
        super().__init__()
        encoder, names = parse_view(view)
        self.names = tuple(n for n in model.modalities if n in names)
        source = model.target_encoders[names[0]] if encoder == "target" else model.fusion_encoder
        self.encoder = copy.deepcopy(source).requires_grad_(True)
        self.sizes = [model.modalities[n].num_tokens for n in self.names]
        self.head = nn.Linear(model.cfg.model.dim, n_classes)
        self._valid = model._valid  # presence-aware token validity, a pure function of the batch

    def forward(self, batch: dict) -> torch.Tensor:
        valid = self._valid(batch, self.names)
        tokens = self.encoder(self.encoder.tokenize(batch, self.names), valid)
        return self.head(pool_by_modality(tokens, valid, self.sizes))


def finetune(model, view: str, dataset_dir, cfg, *, train_split: str, test_split: str, n_classes: int,
             epochs: int, batch_size: int = 32, seed: int = 0, progress: bool = True,
             plan: SplitPlan | None = None) -> ProbeResult:
    """Fine-tune on ``train_split`` for ``epochs``; top-1/top-5 on ``test_split``."""
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    net = FineTuned(model, view, n_classes).to(device)
    opt = torch.optim.AdamW([{"params": net.encoder.parameters(), "lr": FINETUNE_LR * ENCODER_LR_SCALE},
                             {"params": net.head.parameters(), "lr": FINETUNE_LR}], weight_decay=0.05)
    plan = plan or SplitPlan.from_config(str(dataset_dir), cfg)  # the probes' plan: the same carve
    source = plan.source(train_split)
    batches = iterate_local(dataset_dir, source.stored, cfg, batch_size, seed=seed, train=True, epochs=epochs,
                            with_masks=False, rows=source.rows)
    net.train()
    for batch in tqdm(batches, desc=f"fine-tune {view}", disable=not progress, leave=False):
        if not bool((batch["action"] >= 0).any()):
            continue  # all unlabelled: cross-entropy over no target is NaN and would poison the weights
        batch = to_device(batch, device)
        opt.zero_grad()
        # a clip without an action label (-1) teaches nothing; the frozen probes leave it out the same way
        F.cross_entropy(net(batch), batch["action"], ignore_index=-1).backward()
        opt.step()
    net.eval()
    logits, labels = [], []
    with torch.no_grad():
        for batch, _ in iterate_batches(dataset_dir, plan.source(test_split), cfg, batch_size):
            batch = to_device(batch, device)
            logits.append(net(batch).cpu())
            labels.append(batch["action"].cpu())
    out, y = torch.cat(logits), torch.cat(labels)
    out, y = out[y >= 0], y[y >= 0]
    return ProbeResult(topk_accuracy(out, y, 1), topk_accuracy(out, y, 5), out)
