"""Evaluation of trained models: how well they follow their condition, and how sure we are;
and `rendering`, what a listener hears and sees of their music (audio, piano rolls).

It may import `modeling` and `tokenization`; only scripts import it.
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
