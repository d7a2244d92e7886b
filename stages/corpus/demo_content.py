"""What the demo corpus's generated images are: the LFW classes and the random-shapes scenes.

Shared by the training corpus (stages/corpus/demo.py) and the demo's evaluation datasets
(stages/corpus/demo_bench.py). A random-shapes scene (scikit-image's ``skimage.draw.random_shapes``) has
1-3 shapes, each drawn alone on a white canvas (its pixels are exactly the non-white ones) and pasted in
order, so a scene's label mask is exact by construction.

Shape legend: S image side.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

LFW_CLASSES = ("face", "nonface")  # first 100 rows of lfw_subset.npy are faces, the last 100 are not (skimage docs)
# zero-shot class file lines: label<TAB>prompt name
ZEROSHOT_CLASS_LINES = ("face\tface", "nonface\tnon-face object")
SHAPE_CLASSES = ("background", "rectangle", "circle", "triangle", "ellipse")  # mask value = index
SHAPES_SIDE = 64


def shape_layers(seed: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The 1-3 shapes of one random-shapes scene, in paste order: (kind, RGB layer [S, S, 3], its pixels [S, S])."""
    from skimage.draw import random_shapes

    rng = np.random.default_rng(seed)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(1, len(SHAPE_CLASSES)))
        layer, _ = random_shapes((SHAPES_SIDE, SHAPES_SIDE), max_shapes=1, min_shapes=1, min_size=12,
                                 max_size=40, shape=SHAPE_CLASSES[kind], rng=int(rng.integers(2**31)))
        yield kind, layer, (layer != 255).any(-1)  # shape colours lie in [0, 254] per channel: never pure white


def shapes_image(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB image [S, S, 3], uint8 label mask [S, S]) of one random-shapes scene, exact labels."""
    image_SS3 = np.full((SHAPES_SIDE, SHAPES_SIDE, 3), 255, np.uint8)
    mask_SS = np.zeros((SHAPES_SIDE, SHAPES_SIDE), np.uint8)
    for kind, layer, pixels in shape_layers(seed):
        image_SS3[pixels] = layer[pixels]
        mask_SS[pixels] = kind
    return image_SS3, mask_SS
