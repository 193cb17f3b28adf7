"""The data that test-time functions accept: batches of tensors or ``(x, y, ...)`` tuples."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from torch import Tensor


def batch_inputs(batches: Any, num_batches: int | None = None) -> Iterator[Tensor]:
    """Yield the model inputs of ``batches``, at most ``num_batches`` of them.

    A tensor is one batch, a tuple ``(x, y, ...)`` is one batch (``x`` is the input), and any
    other iterable (a list, a DataLoader, a generator) yields batches that are tensors or
    ``(x, y, ...)`` tuples/lists. Labels are never looked at. Raises TypeError for inputs that
    are not floating-point tensors and ValueError for empty batches, naming the batch index.
    """
    if isinstance(batches, Tensor) or (
        isinstance(batches, tuple) and batches and isinstance(batches[0], Tensor)
    ):
        batches = [batches]
    if not isinstance(batches, Iterable):
        raise TypeError(
            f"batches must be a tensor, an (x, y, ...) tuple or an iterable of them (e.g. a "
            f"DataLoader), got {type(batches).__name__}"
        )
    for index, batch in enumerate(batches):
        if num_batches is not None and index >= num_batches:
            return
        x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
        if not isinstance(x, Tensor):
            raise TypeError(
                f"batch {index} has input of type {type(x).__name__}; expected a tensor or an "
                "(x, y, ...) tuple/list whose first element is the model input"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"batch {index} has a {x.dtype} input; expected a floating-point model input. "
                "If you passed one (x, y) batch as a list, pass it as a tuple (x, y) instead."
            )
        if x.shape[0] == 0:
            raise ValueError(f"batch {index} is empty (shape {tuple(x.shape)}); drop empty batches")
        yield x
