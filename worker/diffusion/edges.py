"""Canny edge detection in NumPy: the ``canny`` control preprocessor (a photo in, an edge map out).

The steps of Canny (1986) as OpenCV's ``cv2.Canny`` runs them, without the OpenCV dependency:
a 5x5 Gaussian blur, Sobel gradients, non-maximum suppression along the gradient direction, a
double threshold and hysteresis (weak edges kept only where they touch strong ones). The
thresholds are on the gradient magnitude of 0-255 grey levels, as ControlNet's canny
annotator's defaults (100, 200). Output: white edges on black, RGB, the input's size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Gradient-magnitude thresholds (0-255 grey levels): below LOW never an edge, above HIGH always.
LOW_THRESHOLD = 100
HIGH_THRESHOLD = 200
#: Standard deviation of the Gaussian blur before the gradients, pixels.
BLUR_SIGMA = 1.4


def _convolve_separable(image: np.ndarray, row: np.ndarray, column: np.ndarray) -> np.ndarray:
    """Convolve ``image`` with the outer product of ``column`` and ``row`` (edges replicated)."""
    radius = len(row) // 2
    padded = np.pad(image, radius, mode="edge")
    height, width = image.shape
    across = sum(weight * padded[:, i : i + width] for i, weight in enumerate(row))
    return sum(weight * across[i : i + height, :] for i, weight in enumerate(column))


def _suppress_non_maxima(magnitude: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Keep each pixel's magnitude only where it is a maximum along its gradient direction."""
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180) % 180
    # The two neighbours across the edge, for directions 0, 45, 90 and 135 degrees.
    sector = (((angle + 22.5) // 45) % 4).astype(int)
    offsets = [((0, 1), (0, -1)), ((1, 1), (-1, -1)), ((1, 0), (-1, 0)), ((1, -1), (-1, 1))]
    padded = np.pad(magnitude, 1)
    height, width = magnitude.shape
    kept = np.zeros_like(magnitude)
    for index, pair in enumerate(offsets):
        neighbours = [padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width] for dy, dx in pair]
        # Strictly above one neighbour, at least the other: a plateau two pixels wide keeps one.
        is_max = (magnitude > neighbours[0]) & (magnitude >= neighbours[1]) & (sector == index)
        kept[is_max] = magnitude[is_max]
    return kept


def _hysteresis(strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """Return ``strong`` grown through 8-connected ``weak`` pixels until nothing changes."""
    edges = strong.copy()
    while True:
        padded = np.pad(edges, 1)
        height, width = edges.shape
        touching = np.zeros_like(edges)
        for dy in range(3):
            for dx in range(3):
                touching |= padded[dy : dy + height, dx : dx + width]
        grown = edges | (touching & weak)
        if np.array_equal(grown, edges):
            return edges
        edges = grown


def canny_edges(image: Image.Image, low: float = LOW_THRESHOLD, high: float = HIGH_THRESHOLD) -> Image.Image:
    """Return the Canny edge map of ``image``: white (255) edges on black, RGB, the same size."""
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    offsets = np.arange(-2, 3)
    gauss = np.exp(-(offsets**2) / (2 * BLUR_SIGMA**2))
    blurred = _convolve_separable(grey, gauss / gauss.sum(), gauss / gauss.sum())
    smooth, derivative = np.array([1.0, 2.0, 1.0]), np.array([-1.0, 0.0, 1.0])
    # Sobel: derivative across, smoothing along (the kernels are flipped by convolution: sign only).
    gx = -_convolve_separable(blurred, derivative, smooth)
    gy = -_convolve_separable(blurred, smooth, derivative)
    thinned = _suppress_non_maxima(np.hypot(gx, gy), gx, gy)
    edges = _hysteresis(thinned >= high, thinned >= low)
    return Image.fromarray(np.where(edges, 255, 0).astype(np.uint8)).convert("RGB")
