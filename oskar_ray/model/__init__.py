"""The OSKAR model: tokenizers, token budgets, fusion/target encoders, predictor."""

from .budget import TokenBudgetSampler
from .ema import momentum_at
from .oskar import Oskar, move_batch

__all__ = ["Oskar", "TokenBudgetSampler", "momentum_at", "move_batch"]
