"""A drawing on the page's canvas → the digits model's input, prepared the way scikit-learn's 8×8 digits were.

The digits (UCI optdigits) were made from size-normalised 32×32 bitmaps of handwriting: each 4×4 block's count of
inked pixels became one of 64 values in 0..16. Here the canvas's ink (alpha 0..255) is cropped to the digit, scaled
with area averaging so its longer side spans the 32-pixel frame (as in the dataset, where a digit always fills
the frame's height), moved so its centre of mass sits in the middle of the frame, and summed over 4×4 blocks.
Coverage is kept fractional rather than thresholded, so the ink's total mass survives every step.
"""

from __future__ import annotations

import numpy as np

FRAME = 32  # side of the normalised bitmap the dataset was counted from
CELLS = 8  # side of the model's input
BLOCK = FRAME // CELLS  # 4×4 pixels per input cell
MAX_VALUE = float(BLOCK * BLOCK)  # 16: a fully inked block
# Ink fainter than this (anti-aliasing fringes, a stray touch) does not widen the digit's bounding box.
BOX_THRESHOLD = 0.05


class DrawingError(ValueError):
    """The drawing cannot be turned into an input (empty, wrong size); the message is one sentence for the user."""


def area_weights(source: int, target: int) -> np.ndarray:
    """(target, source) matrix whose row i averages the part of the source that output pixel i covers."""
    edges = np.linspace(0.0, source, target + 1)  # output pixel i spans [edges[i], edges[i+1]) in source pixels
    starts, ends = edges[:-1, np.newaxis], edges[1:, np.newaxis]
    pixels = np.arange(source)[np.newaxis, :]
    overlap = np.clip(np.minimum(ends, pixels + 1) - np.maximum(starts, pixels), 0.0, None)  # (target, source)
    return overlap / overlap.sum(axis=1, keepdims=True)


def area_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (H, W) to (height, width) by area averaging: each output pixel is the mean of the area it covers."""
    rows = area_weights(image.shape[0], height)  # (height, H)
    columns = area_weights(image.shape[1], width)  # (width, W)
    return rows @ image @ columns.T


def centre_by_mass(digit: np.ndarray, frame: int = FRAME) -> np.ndarray:
    """Place digit (h, w ≤ frame) in a frame × frame square with its centre of mass as near the middle as fits."""
    height, width = digit.shape
    mass = digit.sum()
    rows, columns = np.indices(digit.shape) + 0.5  # pixel centres
    centre_row = (digit * rows).sum() / mass
    centre_column = (digit * columns).sum() / mass
    # Whole-pixel shifts (a quarter of an input cell), clamped so no ink leaves the frame.
    top = int(np.clip(round(frame / 2 - centre_row), 0, frame - height))
    left = int(np.clip(round(frame / 2 - centre_column), 0, frame - width))
    placed = np.zeros((frame, frame), dtype=np.float64)
    placed[top : top + height, left : left + width] = digit
    return placed


def block_sums(frame: np.ndarray, cells: int = CELLS) -> np.ndarray:
    """(F, F) coverage in 0..1 → (cells, cells) sums over (F/cells)² blocks: 0..16 for a 32-pixel frame."""
    block = frame.shape[0] // cells
    return frame.reshape(cells, block, cells, block).sum(axis=(1, 3))


def drawing_to_input(ink: np.ndarray) -> np.ndarray:
    """(H, W) ink, 0 (none) to 255 (full), → float32 (8, 8) in 0..16, the model's input for one image."""
    coverage = np.asarray(ink, dtype=np.float64) / 255.0
    inked_rows = np.flatnonzero((coverage > BOX_THRESHOLD).any(axis=1))
    inked_columns = np.flatnonzero((coverage > BOX_THRESHOLD).any(axis=0))
    if inked_rows.size == 0:
        raise DrawingError("The drawing is empty; draw a digit on the canvas first.")
    digit = coverage[inked_rows[0] : inked_rows[-1] + 1, inked_columns[0] : inked_columns[-1] + 1]
    # Scale the longer side to the frame, keeping the aspect ratio (a "1" stays narrow).
    scale = FRAME / max(digit.shape)
    height = max(1, min(FRAME, round(digit.shape[0] * scale)))
    width = max(1, min(FRAME, round(digit.shape[1] * scale)))
    scaled = area_resize(digit, height, width)
    return block_sums(centre_by_mass(scaled)).astype(np.float32)
