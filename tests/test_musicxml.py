"""MusicXML export (`modeling.musicxml`): what music21 reads back from the bytes is the source, on the grid.

Every check compares the re-opened score with the symusic source quantised here, independently of the
exporter: notes (part, pitch, onset, duration) after joining ties, measure lengths from the time signatures
(miditok's bar lines for the real pieces), key signatures, parts and instruments.
"""

import copy
import math
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path
from xml.etree import ElementTree

import pytest
import symusic
from miditok.utils import get_bars_ticks

from modeling.musicxml import score_to_musicxml

music21 = pytest.importorskip("music21")

CORPUS = Path(__file__).resolve().parents[1] / "tokenization" / "corpus"
GRID = 8
# (file, bars kept): multi-instrument pop with drums and an empty track, then classical pieces with meter
# and key changes, a pickup-like 2/4 bar and several tempos
REAL = [
    ("lakh-clean/clean_midi/Elvis Presley/Hound Dog.4.mid", 16),
    ("lakh-clean/clean_midi/Bruno/So Pro Meu Prazer.mid", 12),
    ("midi-classical-music/data/beethoven-piano_sonata_no2_assai_vivace.mid", None),
    ("midi-classical-music/data/bach-bwv1066-1069_orchestral_suites-bwv1069_orchestral_suite_n4_3mov.mid", 10),
]


def on_grid(tick: int, tpq: int) -> Fraction:
    """`tick` in quarters, to the nearest 1/GRID (halves up)."""
    return Fraction(math.floor(Fraction(tick * GRID, tpq) + Fraction(1, 2)), GRID)


def source_notes(score, velocity: bool = False) -> Counter:
    """(part, pitch, onset, duration[, velocity]) in quarters, on the grid, no note shorter than one step."""
    tpq, notes = score.ticks_per_quarter, Counter()
    for index, track in enumerate(score.tracks):
        for note in track.notes:
            start = on_grid(note.time, tpq)
            end = max(on_grid(note.end, tpq), start + Fraction(1, GRID))
            notes[(index, note.pitch, start, end - start, *([note.velocity] if velocity else []))] += 1
    return notes


def source_keys(score) -> list[tuple[Fraction, int, str]]:
    """Key changes (onset, sharps, mode): the last of a shared onset wins, a repeated key is no change."""
    at = {
        on_grid(k.time, score.ticks_per_quarter): (k.key, "minor" if k.tonality else "major")
        for k in score.key_signatures
    }
    keys = []
    for time, key in sorted(at.items()):
        if not keys or keys[-1][1:] != key:
            keys.append((time, *key))
    return keys


def voices(part) -> dict[str, list[tuple[Fraction, object]]]:
    """Each voice's notes and rests across the measures, at their offsets in the part.

    stripTies joins consecutive tied notes only, so it runs voice by voice: on the whole part the voices
    would interleave.
    """
    found: dict[str, list] = {}
    for measure in part.getElementsByClass(music21.stream.Measure):
        streams = list(measure.voices) or [measure]
        for stream in streams:
            key = str(stream.id) if stream is not measure else "1"
            for element in stream.notesAndRests:
                found.setdefault(key, []).append((Fraction(measure.offset) + Fraction(element.offset), element))
    return found


def read_notes(parsed, velocity: bool = False) -> Counter:
    """(part, pitch, onset, duration[, velocity]) of each note music21 reads back, ties joined, chords by pitch."""
    notes = Counter()
    for index, part in enumerate(parsed.parts):
        for elements in voices(part).values():
            stream = music21.stream.Stream()
            for offset, element in elements:
                stream.insert(offset, copy.deepcopy(element))  # stripTies lengthens notes in place
            stream.stripTies(inPlace=True)
            for element in stream.notes:
                onset, length = Fraction(element.offset), Fraction(element.quarterLength)
                loudness = [element.volume.velocity] if velocity else []  # a chord has one (MusicXML's)
                for pitch in element.pitches:
                    notes[(index, pitch.midi, onset, length, *loudness)] += 1
    return notes


def measures(part) -> list[tuple[Fraction, Fraction]]:
    """(offset, length) of each measure, its length being what its contents fill."""
    return [
        (Fraction(m.offset), Fraction(m.duration.quarterLength))
        for m in part.getElementsByClass(music21.stream.Measure)
    ]


def read_keys(part) -> list[tuple[Fraction, int, str]]:
    keys = []
    for measure in part.getElementsByClass(music21.stream.Measure):
        for key in measure.getElementsByClass(music21.key.KeySignature):
            mode = key.mode if isinstance(key, music21.key.Key) else "major"
            keys.append((Fraction(measure.offset) + Fraction(key.offset), key.sharps, mode))
    return keys


def convert(score) -> tuple[bytes, object]:
    """The MusicXML bytes, and the score music21 reads from them."""
    xml = score_to_musicxml(score, GRID)
    return xml, music21.converter.parse(xml, format="musicxml")


def gm_name(program: int) -> str:
    name = music21.instrument.instrumentFromMidiProgram(program).instrumentName
    return "Strings" if name == "StringInstrument" else name


def check_parts(xml: bytes, parsed, score) -> None:
    """A part per track, named after its General MIDI program, which the file keeps exactly.

    The program is read from the XML: music21's reader turns Bright Acoustic Piano (1) back into Piano (0).
    """
    programs = [
        part.findtext("midi-instrument/midi-program") for part in ElementTree.fromstring(xml).iter("score-part")
    ]
    assert len(parsed.parts) == len(programs) == len(score.tracks)
    for part, program, track in zip(parsed.parts, programs, score.tracks, strict=True):
        if track.is_drum:
            assert part.partName == "Drums"
            assert isinstance(part.getElementsByClass("Measure").first().clef, music21.clef.PercussionClef)
        else:
            assert part.partName == gm_name(track.program)
            assert int(program) == track.program + 1  # MusicXML counts programs from 1


@pytest.fixture(scope="module")
def made() -> symusic.Score:
    """Meters 3/4, 2/4, 3/4 then 4/4, G minor (2 flats), a note tied over a barline, overlapping notes of
    different lengths in one track, a chord, an off-grid note and two instruments."""
    tpq = 480
    score = symusic.Score(tpq)
    for time, numerator, denominator in [(0, 3, 4), (3 * tpq, 2, 4), (5 * tpq, 3, 4), (8 * tpq, 4, 4)]:
        score.time_signatures.append(symusic.TimeSignature(time, numerator, denominator))
    score.key_signatures.append(symusic.KeySignature(0, -2, 1))
    score.tempos.append(symusic.Tempo(0, 96))
    piano = symusic.Track("keys", program=1)  # music21 reads the file back as Piano, program 0
    for time, duration, pitch, velocity in [
        (2 * tpq, 2 * tpq, 67, 80),  # beat 3 of the 3/4 bar into the 2/4 bar
        (5 * tpq, 4 * tpq, 58, 70),  # a whole-bar-and-more note under...
        (5 * tpq, tpq // 2, 62, 90),  # ...shorter ones, in the same track
        (5 * tpq + tpq // 2, tpq, 65, 100),
        (9 * tpq, tpq, 60, 64),  # a chord
        (9 * tpq, tpq, 64, 64),
        (10 * tpq + 31, 5 * tpq // 8, 72, 50),  # off the grid and 5/8 long: an eighth tied to a 32nd
    ]:
        piano.notes.append(symusic.Note(time, duration, pitch, velocity))
    bass = symusic.Track("bass", program=33)
    bass.notes.append(symusic.Note(0, 14 * tpq, 43, 100))  # over four barlines
    score.tracks.extend([piano, bass])
    return score


def test_made_score_notes(made):
    assert read_notes(convert(made)[1], velocity=True) == source_notes(made, velocity=True)


def test_made_score_measures_keys_parts(made):
    xml, parsed = convert(made)
    lengths = [3, 2, 3, 4, 4]  # one bar of each meter, then 4/4 up to the bass's end (quarter 14)
    offsets = [0, 3, 5, 8, 12]
    for part in parsed.parts:
        assert measures(part) == [(Fraction(o), Fraction(n)) for o, n in zip(offsets, lengths, strict=True)]
        signatures = [(m.number, m.timeSignature) for m in part.getElementsByClass("Measure") if m.timeSignature]
        assert [(n, ts.numerator, ts.denominator) for n, ts in signatures] == [
            (1, 3, 4),
            (2, 2, 4),
            (3, 3, 4),
            (4, 4, 4),
        ]
        assert read_keys(part) == [(0, -2, "minor")]
    check_parts(xml, parsed, made)
    marks = list(parsed.recurse().getElementsByClass(music21.tempo.MetronomeMark))
    assert [mark.number for mark in marks] == [96]


def expected_bars(score) -> list[Fraction]:
    """Bar starts miditok counts, on the grid, up to the last note's end (the first bar at least).

    miditok stops at the last MIDI tick; a note the grid rounds past it needs the bars that follow.
    """
    tpq = score.ticks_per_quarter
    last = max(start + length for (_, _, start, length) in source_notes(score))
    starts = sorted(
        {on_grid(tick, tpq) for tick in get_bars_ticks(score) if on_grid(tick, tpq) < last} | {Fraction(0)}
    )
    while starts[-1] + meter_length(score, starts[-1]) < last:
        starts.append(starts[-1] + meter_length(score, starts[-1]))
    return starts


def meter_length(score, time: Fraction) -> Fraction:
    """A bar's length by the last time signature at or before `time` (4/4 before the first)."""
    tpq, numerator, denominator = score.ticks_per_quarter, 4, 4
    for signature in score.time_signatures:
        if on_grid(signature.time, tpq) <= time:
            numerator, denominator = signature.numerator, signature.denominator
    return Fraction(4 * numerator, denominator)


@pytest.mark.parametrize(("name", "bars"), REAL, ids=[Path(name).stem[:24] for name, _ in REAL])
def test_real_pieces(name, bars):
    score = symusic.Score(CORPUS / name)
    if bars is not None:
        score = score.clip(0, get_bars_ticks(score)[bars], clip_end=False)
    xml, parsed = convert(score)
    assert read_notes(parsed) == source_notes(score)
    check_parts(xml, parsed, score)
    end = check_measures(parsed, score)
    keys = [key for key in source_keys(score) if key[0] < end]
    for part, track in zip(parsed.parts, score.tracks, strict=True):
        assert read_keys(part) == ([] if track.is_drum else keys)


def check_measures(parsed, score) -> Fraction:
    """Every part's measures are miditok's bars up to the last note's end; returns where the last one ends."""
    starts = expected_bars(score)
    lengths = [b - a for a, b in zip(starts, starts[1:], strict=False)] + [meter_length(score, starts[-1])]
    last = max(start + length for (_, _, start, length) in source_notes(score))
    for part in parsed.parts:
        assert measures(part) == list(zip(starts, lengths, strict=True))
    assert starts[-1] + lengths[-1] >= last
    return starts[-1] + lengths[-1]


def test_meter_change_inside_a_bar():
    """A time signature in the middle of a bar starts a new bar there (as miditok counts): the bar it cuts
    is written short, and a note over the cut is tied."""
    score = symusic.Score(96)
    score.time_signatures.extend([symusic.TimeSignature(0, 4, 4), symusic.TimeSignature(6 * 96, 6, 8)])
    track = symusic.Track("lead", program=40)
    track.notes.extend([symusic.Note(5 * 96, 2 * 96, 64, 90), symusic.Note(9 * 96, 96, 65, 90)])
    score.tracks.append(track)
    parsed = convert(score)[1]
    assert read_notes(parsed) == source_notes(score)
    check_measures(parsed, score)
    assert measures(parsed.parts[0]) == [(0, 4), (4, 2), (6, 3), (9, 3)]


def test_grid_rounding_and_shortest_note():
    """Onsets and ends go to the nearest step; a note rounding to nothing keeps one step."""
    score = symusic.Score(96)
    track = symusic.Track("lead", program=73)
    track.notes.extend([symusic.Note(5, 2, 60, 90), symusic.Note(18, 30, 62, 90)])  # 96/8 = 12 ticks a step
    score.tracks.append(track)
    assert read_notes(convert(score)[1]) == Counter(
        {(0, 60, 0, Fraction(1, 8)): 1, (0, 62, Fraction(1, 4), Fraction(1, 4)): 1}
    )


def test_without_music21(monkeypatch):
    monkeypatch.setitem(sys.modules, "music21", None)
    with pytest.raises(ImportError, match="music21"):
        score_to_musicxml(symusic.Score(480), GRID)
