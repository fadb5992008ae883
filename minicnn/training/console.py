"""Printing while ``fit`` runs: a line of text that does not break the progress bar.

``fit`` shows a tqdm bar per epoch (``verbose=1``); a plain ``print`` in the middle of it
would leave half a bar on the screen. ``write_line`` is what ``fit`` and the callbacks use
for their messages (the epoch summary, why training stopped), and what a callback of your
own should use too.
"""

from __future__ import annotations

import sys

__all__ = ["write_line"]


def write_line(message: str) -> None:
    """Print ``message`` and a newline to stdout, above a tqdm bar that may be on screen.

    Parameters
    ----------
    message : str
        One line of text (no trailing newline needed).
    """
    try:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stdout)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        print(message, flush=True)
