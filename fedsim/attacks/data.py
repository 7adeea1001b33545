"""Victim data for attack experiments: pixel-space pools, the model's input normalisation, batches.

Attacks and metrics work on images in [0, 1] pixel space; models see ``(u - mean) / std``. A
:class:`Pool` keeps both views apart: ``images`` is pixel space, :class:`Normalizer` maps to and
from model input. Pools:

* ``fashion-mnist`` / ``mnist5k`` / ``digits`` -- the train split of ``fedsim.data`` (the data a
  client would hold), de-normalised to pixels; Fashion-MNIST keeps the loader's standardisation
  as the model input, the others feed pixels directly.
* ``photos`` -- a CIFAR-like stand-in: 32x32 RGB crops of ten real photographs bundled with
  scikit-image (astronaut, chelsea, coffee, rocket, immunohistochemistry, hubble_deep_field,
  colorwheel, retina, cat, camera-in-RGB); the label is the source photo (10 classes).

Batches are drawn with an explicit generator; a batch for ``(seed, trial)`` does not depend on the
attack or defense, so every cell of a grid attacks the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import load_dataset
from ..data.datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD

__all__ = ["POOLS", "Normalizer", "Pool", "load_pool", "sample_clients"]

POOLS = ("fashion-mnist", "mnist5k", "digits", "photos")
_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
           "colorwheel", "retina", "cat", "camera")


@dataclass(frozen=True)
class Normalizer:
    """Model input = (pixels - mean) / std (scalars, shared by all channels)."""

    mean: float = 0.0
    std: float = 1.0

    def to_model(self, u: torch.Tensor) -> torch.Tensor:
        return (u - self.mean) / self.std

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean

    @property
    def box(self) -> tuple[float, float]:
        """The valid pixel range [0, 1] expressed in model-input units."""
        return (0.0 - self.mean) / self.std, (1.0 - self.mean) / self.std


@dataclass(frozen=True, eq=False)
class Pool:
    """Candidate victim images: ``images`` [n, C, H, W] in [0, 1], int64 ``labels`` [n]."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    normalizer: Normalizer

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])


def load_pool(name: str, data_dir: str | None = None, *, size: int = 2000, seed: int = 0) -> Pool:
    """A seeded pool of ``size`` train images of dataset ``name`` (one of :data:`POOLS`)."""
    if name not in POOLS:
        raise ValueError(f"unknown attack dataset {name!r}; known: {', '.join(POOLS)}")
    if name == "photos":
        images, labels = _photo_crops(size, seed)
        return Pool(name, images, labels, 10, Normalizer())
    ds = load_dataset(name, data_dir)
    norm = Normalizer(FASHION_MNIST_MEAN, FASHION_MNIST_STD) if name == "fashion-mnist" else Normalizer()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds.train), generator=gen)[:size]
    x, y = ds.train.take(idx)
    return Pool(name, norm.to_pixels(x).clamp(0, 1), y.clone(), ds.num_classes, norm)


def _photo_crops(size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` random 32x32 crops (balanced over the ten photos) of photos resized to 64 px."""
    from skimage import data as skdata
    from skimage.color import gray2rgb
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    images, labels = [], []
    per = -(-size // len(_PHOTOS))
    for label, photo in enumerate(_PHOTOS):
        img = getattr(skdata, photo)()
        img = gray2rgb(img) if img.ndim == 2 else img[..., :3]
        h, w = img.shape[:2]
        scale = 64 / min(h, w)
        small = resize(img, (max(32, round(h * scale)), max(32, round(w * scale))),
                       anti_aliasing=True, preserve_range=True) / 255.0
        for _ in range(per):
            top = rng.integers(0, small.shape[0] - 31)
            left = rng.integers(0, small.shape[1] - 31)
            images.append(small[top:top + 32, left:left + 32].transpose(2, 0, 1))
            labels.append(label)
    order = rng.permutation(len(labels))[:size]
    x = torch.as_tensor(np.stack(images)[order], dtype=torch.float32).clamp(0, 1)
    return x, torch.as_tensor(np.asarray(labels)[order], dtype=torch.int64)


def sample_clients(pool: Pool, num_clients: int, batch_size: int, gen: torch.Generator, *,
                   unique_labels: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``num_clients`` disjoint batches ``(pixels [B, C, H, W], labels [B])`` from the pool.

    The first client's batch is the same for any ``num_clients`` with the same generator state,
    so a SecAgg cell and a single-client cell share their first client. With ``unique_labels``,
    labels are distinct within each client's batch (needs ``batch_size <= num_classes``)."""
    need = num_clients * batch_size
    if need > len(pool.labels):
        raise ValueError(f"pool of {len(pool.labels)} images is too small for {num_clients} x {batch_size}")
    perm = torch.randperm(len(pool.labels), generator=gen)
    if not unique_labels:
        chosen = [perm[k * batch_size:(k + 1) * batch_size] for k in range(num_clients)]
    else:
        if batch_size > pool.num_classes:
            raise ValueError(f"unique labels need batch_size <= {pool.num_classes}, got {batch_size}")
        chosen, used = [], set()
        for _ in range(num_clients):
            seen, batch = set(), []
            for i in perm.tolist():
                lab = int(pool.labels[i])
                if i not in used and lab not in seen:
                    batch.append(i)
                    seen.add(lab)
                    used.add(i)
                if len(batch) == batch_size:
                    break
            chosen.append(torch.tensor(batch, dtype=torch.int64))
    return [(pool.images[i], pool.labels[i]) for i in chosen]
