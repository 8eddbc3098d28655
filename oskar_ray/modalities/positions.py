"""Fixed sin-cos position tables (1D, and 3D factorised over t/h/w)."""

from __future__ import annotations

import torch


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """``(N,) -> (N, dim)``; odd or tiny ``dim`` is zero-padded."""
    half = dim // 2
    if half == 0:
        return torch.zeros(positions.numel(), dim)
    freqs = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float64) / max(half, 1)))
    angles = positions.double().reshape(-1, 1) * freqs
    table = torch.cat([angles.sin(), angles.cos()], dim=1).float()
    return torch.nn.functional.pad(table, (0, dim - 2 * half))


def sincos_3d(grid_t: int, grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    """``(grid_t * grid_h * grid_w, dim)`` in t-major, then h, then w order.

    Each axis gets the same even share of the width; leftovers are zero so the
    table always has exactly ``dim`` columns.
    """
    per_axis = (dim // 6) * 2
    t, h, w = torch.meshgrid(
        torch.arange(grid_t), torch.arange(grid_h), torch.arange(grid_w), indexing="ij"
    )
    parts = [sincos_1d(axis.reshape(-1), per_axis) for axis in (t, h, w)]
    table = torch.cat(parts, dim=1)
    return torch.nn.functional.pad(table, (0, dim - table.shape[1]))
