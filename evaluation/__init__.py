"""Evaluation of trained models: `likelihood` (held-out loss, bits per token and per note,
summed across processes), `identification` (does the model's likelihood name the composer,
and how sure we are), `classification` (the composer classifier's windows and its ranked
predictions, the `Judge` that reads generated music), `metrics` (music statistics of real
and generated pieces, their distances, top-k accuracy), `evaluated` (a language model or the
n-gram behind one interface, and one guidance scale's samples judged), `report` (the markdown
report, plots and the README's table), and `rendering`, what a listener hears and sees
(audio, piano rolls).

It may import `modeling` and `tokenization`; only scripts import it (`modeling`, which must
stay importable alone as Hub remote code, never does).
"""

from .identification import (
    POSITIONS,
    Window,
    bootstrap_interval,
    identification,
    identification_windows,
    window_tokens,
)

__all__ = [
    "POSITIONS",
    "Window",
    "bootstrap_interval",
    "identification",
    "identification_windows",
    "window_tokens",
]
