"""MusicXML export of a symusic Score, built element by element through music21 (an optional dependency).

The score is not round-tripped through a MIDI file: music21's MIDI import splits tied notes oddly and merges
frequent meter changes (3/4, 2/4, 3/4, 4/4 came back as 3/4, 4/4), so the measures, voices and ties are built
here from the symusic events and music21 only lays out and writes the notation.

This module imports nothing of the project (it sits beside a Hub remote-code pipeline file that imports it
relatively): only the standard library, symusic and, inside the function, music21.
"""

from __future__ import annotations

import bisect
import contextlib
import importlib.util
import io
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import symusic
import symusic.core

DEFAULT_METER = (4, 4)
DRUM_PART_NAME = "Drums"
PART_NAMES = {"StringInstrument": "Strings"}  # music21's name for GM's string ensembles is its class name
MISSING_MUSIC21 = 'MusicXML export needs music21: pip install "midi-lm[score]" (or pip install music21)'


@dataclass(frozen=True)
class Bar:
    """One measure: where it starts and how long it lasts (quarters), and the meter in force."""

    start: Fraction
    length: Fraction
    meter: tuple[int, int]

    @property
    def end(self) -> Fraction:
        return self.start + self.length


@dataclass(frozen=True)
class Piece:
    """A note cut at the barlines: its place inside one bar, and its tie to the neighbouring pieces."""

    start: Fraction
    end: Fraction
    pitch: int
    velocity: int
    tie: str | None
    note_span: tuple[Fraction, Fraction]


@dataclass
class Group:
    """Pieces sounding together with one start, end and tie: written as one note or chord."""

    start: Fraction
    end: Fraction
    tie: str | None
    pieces: list[Piece] = field(default_factory=list)


def score_to_musicxml(score: symusic.Score, grid: int) -> bytes:
    """MusicXML bytes of `score`: one part per track, measures following every time signature.

    `grid` is the number of positions per quarter note (the tokenizer's finest beat resolution): note starts
    and ends are rounded to the nearest 1/grid of a quarter, and no note is shorter than one step. Notes that
    overlap in a track are all kept, in as many voices as needed (simultaneous notes of equal length and tie
    become chords); notes crossing a barline become tied notes. Also kept: every time signature, every key
    signature (but on drum parts), the first tempo (a metronome mark), each track's General MIDI program
    (drums: a percussion part) and the velocities, as MusicXML's per-note `dynamics`, which music21 reads
    back (a chord has one: its loudest note's). Dropped: later tempo changes, track names, lyrics, markers,
    pedals, controllers, pitch bends. Drum notes stay pitched notes (their MIDI keys) under a percussion clef.
    """
    music21 = _import_music21()
    if grid < 1:
        raise ValueError(f"grid must be a positive number of positions per quarter, got {grid}")
    if not isinstance(score, symusic.core.ScoreTick):
        score = score.to("tick")
    tpq = score.ticks_per_quarter
    tracks = [_quantised_notes(track, tpq, grid) for track in score.tracks]
    last = max((end for notes in tracks for _, end, _, _ in notes), default=Fraction(0))
    bars = _bars(score, tpq, grid, last)
    keys = _keys(score, tpq, grid)
    tempo = score.tempos[0].qpm if len(score.tempos) else None
    result = music21.stream.Score()
    for index, (track, notes) in enumerate(zip(score.tracks, tracks, strict=True)):
        part = _part(music21, track, notes, bars, keys, tempo if index == 0 else None)
        part.id = f"P{index + 1}"
        result.insert(0, part)
    return _export(music21, result)


def music21_available() -> bool:
    """Whether MusicXML can be written here: the callers ask before any slow work, not after it."""
    return importlib.util.find_spec("music21") is not None


def _import_music21() -> Any:
    """music21 is imported here, not at module level, so the rest of the package works without it."""
    try:
        import music21
        import music21.musicxml.m21ToXml
    except ImportError as error:
        raise ImportError(MISSING_MUSIC21) from error
    return music21


def _quantise(tick: int, tpq: int, grid: int) -> Fraction:
    """`tick` in quarters, rounded half up to the nearest 1/grid (exact fractions: no float drift over long pieces)."""
    return Fraction(math.floor(Fraction(tick * grid, tpq) + Fraction(1, 2)), grid)


def _quantised_notes(track: Any, tpq: int, grid: int) -> list[tuple[Fraction, Fraction, int, int]]:
    """(start, end, pitch, velocity) in quarters; a note that rounds to nothing keeps one grid step."""
    step = Fraction(1, grid)
    notes = []
    for note in track.notes:
        start = _quantise(note.time, tpq, grid)
        end = max(_quantise(note.time + note.duration, tpq, grid), start + step)
        notes.append((start, end, note.pitch, note.velocity))
    return notes


def _meters(score: Any, tpq: int, grid: int) -> list[tuple[Fraction, tuple[int, int]]]:
    """Time signatures in force from each time on (the last one wins at a shared time; 4/4 before the first).

    Invalid ones (a zero numerator or denominator) are ignored, as miditok does.
    """
    meters: dict[Fraction, tuple[int, int]] = {Fraction(0): DEFAULT_METER}
    for signature in score.time_signatures:
        if signature.numerator > 0 and signature.denominator > 0:
            meters[_quantise(signature.time, tpq, grid)] = (signature.numerator, signature.denominator)
    return sorted(meters.items())


def _bars(score: Any, tpq: int, grid: int, last: Fraction) -> list[Bar]:
    """The measures up to the last note end (at least one), the same way miditok counts bars.

    Every time signature starts a new bar at its time; a bar it interrupts is written shorter than its meter.
    """
    meters = _meters(score, tpq, grid)
    bars: list[Bar] = []
    for index, (start, meter) in enumerate(meters):
        stop = meters[index + 1][0] if index + 1 < len(meters) else None
        length = Fraction(4 * meter[0], meter[1])
        while (stop is None and (start < last or not bars)) or (stop is not None and start < stop):
            bars.append(Bar(start, length if stop is None else min(length, stop - start), meter))
            start += length
    return bars


def _keys(score: Any, tpq: int, grid: int) -> list[tuple[Fraction, int, str]]:
    """(time, sharps, mode) of each key change: symusic's `key` counts sharps (negative: flats), `tonality` 1 is minor.

    A repeated key is dropped and the last one wins at a shared time, so each one written is a real change.
    """
    at: dict[Fraction, tuple[int, str]] = {}
    for signature in score.key_signatures:
        if -7 <= signature.key <= 7:
            at[_quantise(signature.time, tpq, grid)] = (signature.key, "minor" if signature.tonality else "major")
    keys: list[tuple[Fraction, int, str]] = []
    for time, (sharps, mode) in sorted(at.items()):
        if not keys or keys[-1][1:] != (sharps, mode):
            keys.append((time, sharps, mode))
    return keys


def _pieces(notes: list[tuple[Fraction, Fraction, int, int]], bars: list[Bar]) -> list[list[Piece]]:
    """Each note cut at the barlines it crosses, listed under its bars, with start/continue/stop ties."""
    starts = [bar.start for bar in bars]
    per_bar: list[list[Piece]] = [[] for _ in bars]
    for start, end, pitch, velocity in notes:
        index = _bar_index(starts, start)
        time = start
        while time < end:
            bar = bars[index]
            stop = min(end, bar.end) if index + 1 < len(bars) else end
            tie = _tie(time > start, stop < end)
            per_bar[index].append(Piece(time - bar.start, stop - bar.start, pitch, velocity, tie, (start, end)))
            time, index = stop, index + 1
    return per_bar


def _bar_index(starts: list[Fraction], time: Fraction) -> int:
    """Index of the bar holding `time` (bars are sorted by start; the first starts at 0)."""
    return max(bisect.bisect_right(starts, time) - 1, 0)


def _tie(from_before: bool, to_after: bool) -> str | None:
    """MusicXML's tie type of a piece, given whether the note goes on before and after it."""
    if from_before:
        return "continue" if to_after else "stop"
    return "start" if to_after else None


def _groups(pieces: list[Piece]) -> list[Group]:
    """Chords of pieces with one start, end and tie, cut from notes of one span.

    The note span is part of the key so that a tied chord is the same chord in every bar: music21's
    stripTies (and notation programs) join ties between consecutive chords of equal pitches.
    """
    groups: dict[tuple, Group] = {}
    for piece in sorted(pieces, key=lambda piece: (piece.start, -piece.end, piece.pitch)):
        key = (piece.start, piece.end, piece.tie, piece.note_span)
        groups.setdefault(key, Group(piece.start, piece.end, piece.tie)).pieces.append(piece)
    return list(groups.values())


def _voices(groups: list[Group], previous: dict[tuple, int]) -> tuple[list[list[Group]], dict[tuple, int]]:
    """Groups spread over voices that never overlap; a tie continues in the voice it started in.

    `previous` maps the note span of each group tied over the barline to its voice in the previous bar.
    Returns the voices and that map for the next bar.
    """
    voices: list[list[Group]] = []
    busy: list[Fraction] = []
    continued = [group for group in groups if group.tie in ("stop", "continue")]
    for group in continued + [group for group in groups if group.tie not in ("stop", "continue")]:
        wanted = previous.get(group.pieces[0].note_span) if group.tie in ("stop", "continue") else None
        index = wanted if wanted is not None and _free(busy, wanted, group.start) else _first_free(busy, group.start)
        while len(voices) <= index:
            voices.append([])
            busy.append(Fraction(0))
        voices[index].append(group)
        busy[index] = group.end
    ties = {
        g.pieces[0].note_span: i for i, voice in enumerate(voices) for g in voice if g.tie in ("start", "continue")
    }
    return [sorted(voice, key=lambda group: group.start) for voice in voices], ties


def _free(busy: list[Fraction], index: int, time: Fraction) -> bool:
    return index >= len(busy) or busy[index] <= time


def _first_free(busy: list[Fraction], time: Fraction) -> int:
    return next((index for index, until in enumerate(busy) if until <= time), len(busy))


def _part(music21: Any, track: Any, notes: list, bars: list[Bar], keys: list, tempo: float | None) -> Any:
    """One music21 Part of measures for a track: instrument, clef, meters, keys, voices and rests."""
    part = music21.stream.Part()
    instrument = _instrument(music21, track)
    part.partName = PART_NAMES.get(instrument.instrumentName, instrument.instrumentName)
    previous: dict[tuple, int] = {}
    signature = None
    for bar, pieces in zip(bars, _pieces(notes, bars), strict=True):
        measure = music21.stream.Measure(number=len(part) + 1)
        if signature is None or bar.meter != (signature.numerator, signature.denominator):
            signature = music21.meter.TimeSignature(f"{bar.meter[0]}/{bar.meter[1]}")
            measure.insert(0, signature)
        if not track.is_drum:
            for time, sharps, mode in keys:
                if bar.start <= time < bar.end:
                    measure.insert(time - bar.start, music21.key.KeySignature(sharps).asKey(mode))
        voices, previous = _voices(_groups(pieces), previous)
        _fill(music21, measure, voices, bar, signature)
        measure.paddingRight = Fraction(4 * bar.meter[0], bar.meter[1]) - bar.length
        part.coreAppend(measure)
    part.coreElementsChanged()
    first = part.getElementsByClass(music21.stream.Measure).first()
    first.insert(0, instrument)
    first.insert(0, music21.clef.PercussionClef() if track.is_drum else music21.clef.bestClef(part, recurse=True))
    if tempo:
        first.insert(0, music21.tempo.MetronomeMark(number=round(tempo, 2), referent=1.0))
    return part


def _instrument(music21: Any, track: Any) -> Any:
    """The General MIDI instrument of the track (drums: a percussion instrument on MIDI channel 10).

    The exact program is kept, so players pick the right sound; a program music21 cannot name (none in
    0-127 today) gets a plain Instrument named after the track.
    """
    instruments = music21.instrument
    if track.is_drum:
        instrument = instruments.UnpitchedPercussion()
        instrument.instrumentName = DRUM_PART_NAME
        instrument.midiChannel = 9
        return instrument
    try:
        instrument = instruments.instrumentFromMidiProgram(track.program)
    except instruments.InstrumentException:
        instrument = instruments.Instrument(track.name or f"Program {track.program}")
    instrument.midiProgram = track.program
    return instrument


def _fill(music21: Any, measure: Any, voices: list[list[Group]], bar: Bar, signature: Any) -> None:
    """Notes, chords and gap rests into the measure: directly when one voice suffices, else into Voices.

    Rests of the first voice are shown; those of the other voices only keep their timing, hidden.
    """
    if len(voices) <= 1:
        _fill_voice(music21, measure, voices[0] if voices else [], bar.length, signature, hidden=False)
        return
    for index, groups in enumerate(voices):
        voice = music21.stream.Voice(id=index + 1)
        _fill_voice(music21, voice, groups, bar.length, signature, hidden=index > 0)
        measure.insert(0, voice)


def _fill_voice(
    music21: Any, stream: Any, groups: list[Group], length: Fraction, signature: Any, hidden: bool
) -> None:
    """One voice's notes and rests, back to back from the barline to the bar's end, then beamed."""
    elements = []
    time = Fraction(0)
    for group in groups:
        if group.start > time:
            elements += _rests(music21, group.start - time, hidden, whole_bar=False)
        elements += _sounding(music21, group)
        time = group.end
    if time < length:
        whole_bar = time == 0 and length == signature.barDuration.quarterLength
        elements += _rests(music21, length - time, hidden, whole_bar)
    time = Fraction(0)
    for element in elements:
        stream.coreInsert(time, element)
        time += Fraction(element.quarterLength)
    stream.coreElementsChanged()
    _beam(music21, elements, signature)


def _lengths(music21: Any, length: Fraction) -> list[Fraction]:
    """Notatable lengths adding up to `length`: a 5/8 note is written as an eighth tied to a 32nd.

    music21 splits such 'complex' durations on export too, but only by deep-copying the whole part.
    """
    components = music21.duration.Duration(length).components
    parts = [Fraction(component.quarterLength) for component in components]
    return parts if len(parts) > 1 and sum(parts) == length else [length]


def _rests(music21: Any, length: Fraction, hidden: bool, whole_bar: bool) -> list[Any]:
    """Rests filling a gap; a shown rest filling a whole bar is a measure rest.

    Saying so up front spares the exporter a time-signature context search per rest ('auto').
    """
    rests = [music21.note.Rest(quarterLength=part) for part in _lengths(music21, length)]
    for rest in rests:
        rest.style.hideObjectOnPrint = hidden
        rest.fullMeasure = whole_bar and not hidden
    return rests


def _sounding(music21: Any, group: Group) -> list[Any]:
    """Notes, or Chords when several pitches share the group, with ties (one element per notatable length).

    MusicXML gives a chord one `dynamics` (music21 writes the chord's, not its notes'): the loudest note's.
    """
    lengths = _lengths(music21, group.end - group.start)
    tied_before = group.tie in ("stop", "continue")
    tied_after = group.tie in ("start", "continue")
    elements = []
    for index, length in enumerate(lengths):
        tie = _tie(tied_before or index > 0, tied_after or index < len(lengths) - 1)
        notes = [_note(music21, piece.pitch, length, tie) for piece in group.pieces]
        element = notes[0] if len(notes) == 1 else music21.chord.Chord(notes, quarterLength=length)
        element.volume.velocity = max(piece.velocity for piece in group.pieces)
        elements.append(element)
    return elements


def _note(music21: Any, pitch: int, length: Fraction, tie: str | None) -> Any:
    note = music21.note.Note(pitch, quarterLength=length)
    if tie:
        note.tie = music21.tie.Tie(tie)
    return note


def _beam(music21: Any, elements: list[Any], signature: Any) -> None:
    """Beams by the meter's beat groups (cosmetic: a rhythm music21 cannot beam is left with flags)."""
    if len(elements) < 2:
        return
    try:
        with _quiet():
            beams = signature.getBeams(elements)
    except music21.exceptions21.Music21Exception:
        return
    for element, beam in zip(elements, beams, strict=True):
        if beam is not None and not element.isRest:
            element.beams = beam


def _export(music21: Any, score: Any) -> bytes:
    """MusicXML of measures already laid out: only accidentals and tuplet brackets are left to music21.

    The exporter's own makeNotation would deep-copy the score and pad interrupted (short) measures with rests,
    so it is switched off.
    """
    for part in score.parts:
        part.makeAccidentals(inPlace=True)
        for measure in part.getElementsByClass(music21.stream.Measure):
            for stream in [measure, *measure.voices]:
                music21.stream.makeNotation.makeTupletBrackets(stream, inPlace=True)
    exporter = music21.musicxml.m21ToXml.GeneralObjectExporter(score)
    exporter.makeNotation = False
    with _quiet():
        return exporter.parse()


def _quiet() -> contextlib.AbstractContextManager:
    """Mutes what music21 prints to stderr for the file's sake only: 'out of midi channels' past 15 pitched
    parts (MusicXML has 16 channels; such parts share channel 1) and 'messed up beam pair' for some rhythms.
    """
    return contextlib.redirect_stderr(io.StringIO())
