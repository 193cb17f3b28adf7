"""Environment variables set for the duration of a block."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping


@contextlib.contextmanager
def scoped_environ(values: Mapping[str, str], restore: Iterable[str] = ()) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for a block, then put back what was there before.

    Names in ``restore`` are put back too (unset if they were unset), so that a block whose code
    sets further variables of the same family leaves none of them behind.
    """
    saved = {k: os.environ.get(k) for k in {*values, *restore}}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
