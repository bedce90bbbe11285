"""Small numeric helpers shared by retrieval, indexing and evaluation."""

from __future__ import annotations

import numpy as np

#: Norms below this count as zero: such rows stay (near) zero instead of blowing up.
NORM_EPS = 1e-12


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``x`` scaled to unit L2 norm along ``axis`` (zero vectors stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), NORM_EPS)
