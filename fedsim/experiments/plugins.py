"""User plug-ins named by import string (``"package.module:attribute"``) in a config.

Contracts (documented in the README, tested in ``tests/unit/test_plugins.py``):

- ``model.name = "pkg.mod:factory"``: ``factory(input_shape: tuple, num_classes: int) -> torch.nn.Module``;
  built under a seeded CPU generator, like the zoo's models, so the run seed fixes its weights;
- ``data.name = "pkg.mod:loader"``: ``loader(seed: int) -> dict`` with numpy arrays ``x_train``,
  ``y_train``, ``x_test``, ``y_test`` (integer labels ``0..C-1``) and optionally ``client_ids``
  (one id per training sample: a natural partition, ``data.partition = "natural"``);
- ``strategy.name = "pkg.mod:ClassName"``: a ``fedsim.strategies.FedsimStrategy`` subclass; its
  own constructor keywords come from the ``[strategy.args]`` table.

A name that does not resolve fails at config load, before any data is read, naming the key.
"""

from __future__ import annotations

import importlib

import numpy as np
import torch

from ..config import ConfigError
from ..data import Dataset, Split


def is_import_string(name: str) -> bool:
    return ":" in name


def resolve(key: str, name: str):
    """The object ``name`` = ``"package.module:attribute"`` names; a ConfigError naming ``key`` if not."""
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"config key '{key}': '{name}' is not an import string 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"config key '{key}': cannot import module '{module_name}' ({exc})") from None
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"config key '{key}': module '{module_name}' has no attribute '{attr}'") from None
    if not callable(obj):
        raise ConfigError(f"config key '{key}': '{name}' is not callable")
    return obj


def build_model(name: str, input_shape: tuple, num_classes: int) -> torch.nn.Module:
    model = resolve("model.name", name)(tuple(input_shape), int(num_classes))
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"config key 'model.name': '{name}' returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_dataset(name: str, seed: int) -> Dataset:
    raw = resolve("data.name", name)(int(seed))
    if not isinstance(raw, dict):
        raise ConfigError(f"config key 'data.name': '{name}' returned {type(raw).__name__}, not a dict")
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in raw]
    if missing:
        raise ConfigError(f"config key 'data.name': '{name}' returned no {', '.join(missing)}")
    x_tr, x_te = (np.asarray(raw[k], dtype=np.float32) for k in ("x_train", "x_test"))
    y_tr, y_te = (np.asarray(raw[k]) for k in ("y_train", "y_test"))
    for key, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        if y.ndim != 1 or len(x) != len(y) or len(y) == 0:
            raise ConfigError(f"config key 'data.name': '{name}' {key} split has {len(x)} inputs and labels of "
                              f"shape {y.shape}; need one integer label per input")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise ConfigError(f"config key 'data.name': '{name}' {key} labels must be integers >= 0")
        if not np.isfinite(x).all():
            raise ConfigError(f"config key 'data.name': '{name}' {key} inputs contain NaN or Inf")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise ConfigError(f"config key 'data.name': '{name}' train inputs are {x_tr.shape[1:]}, test {x_te.shape[1:]}")
    groups = raw.get("client_ids")
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != y_tr.shape:
            raise ConfigError(f"config key 'data.name': '{name}' client_ids has shape {groups.shape}, "
                              f"need one id per training sample {y_tr.shape}")
    classes = int(max(y_tr.max(), y_te.max())) + 1
    return Dataset(name, Split(torch.from_numpy(x_tr), torch.from_numpy(y_tr.astype(np.int64))),
                   Split(torch.from_numpy(x_te), torch.from_numpy(y_te.astype(np.int64))), classes,
                   tuple(int(d) for d in x_tr.shape[1:]), groups=groups)
