"""A signature's inputs and outputs: named tensor specs (dtype and shape, None for a free dimension)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One named input: its dtype and shape, None for a free dimension (the batch)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        """E.g. 'float32 [N, 8, 8]'."""
        dims = ", ".join("N" if size is None else str(size) for size in self.shape)
        return f"{np.dtype(self.dtype).name} [{dims}]"
