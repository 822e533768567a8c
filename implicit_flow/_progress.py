"""A tqdm bar fed from inside compiled loops through `jax.debug.callback`."""

import contextlib

import numpy as np
from tqdm.auto import tqdm


_BAR: list = []  # the open bar, if any; module-level so callbacks never retrace


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool):
    """Open a bar of `total` members for the duration of the block (if `enabled`)."""
    if not enabled:
        yield
        return
    bar = tqdm(total=total, desc="flows", unit="init", smoothing=0.0)
    bar.converged = 0
    _BAR.append(bar)
    try:
        yield
    finally:
        _BAR.remove(bar)
        bar.close()


def report_progress(finished: np.ndarray, converged: np.ndarray) -> None:
    """Host callback: `finished` more members ended, `converged` of them converged."""
    if _BAR:
        bar = _BAR[-1]
        bar.converged += int(converged)
        bar.set_postfix(converged=bar.converged, refresh=False)
        bar.update(int(finished))
