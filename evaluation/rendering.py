"""What a listener hears and sees of generated MIDI: audio and a piano roll.

Audio comes from symusic's own synthesizer and a General MIDI soundfont, in this process: no
FluidSynth or other system program. The soundfont is the one given, else Debian's
`fluid-soundfont-gm` when installed, else symusic's MuseScore General, downloaded once into
symusic's data folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import symusic

DEBIAN_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
SAMPLE_RATE = 44100


def find_soundfont(path: str | Path | None = None) -> Path:
    """The General MIDI soundfont to render with (see the module docstring for the order)."""
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no soundfont at {path}: give a .sf2 or .sf3 file")
        return Path(path)
    if DEBIAN_SOUNDFONT.is_file():
        return DEBIAN_SOUNDFONT
    builtin = symusic.BuiltInSF3.MuseScoreGeneral()
    try:
        return builtin.path(download=True)
    except Exception as error:  # pySmartDL raises URLError offline, its own errors on a bad download
        raise FileNotFoundError(
            f"no General MIDI soundfont: symusic could not download {builtin.name} ({error}; offline?); install "
            "one with `sudo apt-get install fluid-soundfont-gm`, or pass a .sf2 file"
        ) from None


def render_audio(score: symusic.Score, soundfont: Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Stereo float32 samples, shape `(2, samples)`, in [-1, 1].

    A synthesizer per call: it loads the soundfont lazily (instantly) and keeps every sample it
    decoded, so one kept for a server's life grows with every instrument, pitch and velocity it
    meets (the web app: 850 to 1,290 MiB in two minutes of load; every General MIDI program once:
    2.8 GB). A fresh one costs about 0.13 s more per 10 s piece (FluidR3_GM, this CPU).
    """
    return np.asarray(symusic.Synthesizer(str(soundfont), sample_rate, 0).render(score, stereo=True))


def write_wav(score: symusic.Score, path: Path, soundfont: Path, sample_rate: int = SAMPLE_RATE) -> Path:
    """Render `score` into a 16-bit WAV file at `path`."""
    audio = np.asfortranarray(render_audio(score, soundfont, sample_rate), dtype=np.float32)
    symusic.dump_wav(str(path), audio, sample_rate, True)
    return path


def piano_roll(score: symusic.Score, title: str):
    """All tracks' notes as one pitch-over-time matplotlib figure (sixteenth-note columns)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    roll = score.resample(tpq=4, min_dur=1).pianoroll(modes=["frame"], pitch_range=[0, 128], encode_velocity=True)
    image = roll[0].max(axis=0)  # [pitch, time]
    pitches = image.any(axis=1).nonzero()[0]
    low, high = (max(int(pitches.min()) - 2, 0), min(int(pitches.max()) + 3, 128)) if len(pitches) else (0, 128)
    figure = Figure(figsize=(max(6.0, min(image.shape[1] / 40, 24.0)), 4), layout="tight")
    axes = figure.subplots()
    axes.imshow(
        image[low:high], origin="lower", aspect="auto", cmap="magma", extent=(0, image.shape[1] / 16, low, high)
    )
    axes.set(xlabel="bars (4/4)", ylabel="MIDI pitch", title=title)
    return figure
