"""Generate MIDI for some composers with a trained model, through `pipeline("midi-generation")`.

    python scripts/generate.py --length 2000 --composers "Mozart, Bach, Beethoven, Chopin, Liszt"
    python scripts/generate.py --model mamba --composers "Bach" --num-samples 4 --plot --render wav
    python scripts/generate.py --model outputs/xlstm-small --prompt theme.mid --guidance-scale 2
    python scripts/generate.py --list-composers
    python scripts/generate.py --composers Chopin --stream
    python scripts/generate.py --model outputs/finetune-pop --composers Pop --format musicxml
    python scripts/generate.py --model outputs/midicaps-small --list-conditions
    python scripts/generate.py --model outputs/midicaps-small --genre jazz --tempo 140 --mode minor

`--model` is a family name (the model a preset trained into `outputs/<family>-small`, else the
bundled model of that family), a model folder, or a Hub repo id; without it the bundled GPT-2
generates. A model trained on MidiCaps also takes `--genre`, `--tempo` (slow, moderate, fast, or
beats per minute) and `--mode` (major, minor); `--list-conditions` shows what it knows.
Files go to `<output_dir>/<model>/<conditions>/sample_<i>.mid` (`bach`, `jazz-fast`), with a piano roll
(`--plot`), audio (`--render wav`: symusic's synthesizer and a General MIDI soundfont) and a
MusicXML score (`--format musicxml`, for MuseScore or Sibelius); a sample written again
replaces them or removes the old ones. A fine-tuned adapter folder (scripts/finetune.py) is
a model folder here too.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from transformers import pipeline

import modeling
from command_line import CommandParser
from evaluation.rendering import find_soundfont, piano_roll, write_wav
from model_cards import WELL_TRAINED
from modeling.catalog import resolve_model
from modeling.musicxml import MISSING_MUSIC21, music21_available
from modeling.pipeline_midi_generation import MusicVocabulary
from tokenization.hub import hub_access

PITCH_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
DEFAULT_COMPOSERS = "Bach, Mozart, Beethoven, Chopin"


@dataclass
class Arguments:
    model: str | None = field(
        default=None,
        metadata={"help": "transformer, mamba, xlstm, a model folder or a Hub repo id; left out: the bundled model."},
    )
    composers: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated names (see --list-composers); Unknown: no composer. Left out: "
            f"{DEFAULT_COMPOSERS}, or none when another condition is given or the model knows no composer."
        },
    )
    genre: str | None = field(default=None, metadata={"help": "A genre the model knows (see --list-conditions)."})
    tempo: str | None = field(default=None, metadata={"help": "slow, moderate, fast, or beats per minute."})
    mode: str | None = field(default=None, metadata={"help": "major or minor."})
    list_composers: bool = field(
        default=False, metadata={"help": "Print the model's composers with their training pieces, then exit."}
    )
    list_conditions: bool = field(
        default=False, metadata={"help": "Print every condition the model knows (composers, genres, ...), then exit."}
    )
    length: int = field(default=1024, metadata={"help": "Tokens to generate per sample."})
    num_samples: int = field(default=1, metadata={"help": "Samples per composer."})
    output_dir: str = field(default="outputs/generated", metadata={"help": "Output folder."})
    prompt: str | None = field(default=None, metadata={"help": "A MIDI file each sample continues."})
    guidance_scale: float = field(default=1.0, metadata={"help": "Classifier-free guidance (1: off)."})
    guidance_conditions: str | None = field(
        default=None, metadata={"help": "Comma-separated conditions guidance pushes on (e.g. genre); left out: all."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Below 1: safer choices; above 1: bolder ones."})
    top_k: int = field(default=0, metadata={"help": "Sample among the k most likely tokens (0: all)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling (1: off)."})
    seed: int = field(default=0, metadata={"help": "The same seed, command and device give the same files."})
    allow_early_end: bool = field(
        default=False, metadata={"help": "Stop a sample when the model ends the piece, before --length tokens."}
    )
    stream: bool = field(default=False, metadata={"help": "Print each note as soon as it is generated."})
    plot: bool = field(default=False, metadata={"help": "Write a piano-roll PNG beside each sample."})
    format: str = field(
        default="mid",
        metadata={"help": "mid, or musicxml: also a MusicXML score beside each file (MuseScore; needs music21)."},
    )
    render: str | None = field(default=None, metadata={"help": "wav: render audio beside each file."})
    soundfont: str | None = field(
        default=None,
        metadata={
            "help": "General MIDI soundfont (.sf2/.sf3) for --render; left out: Debian's fluid-soundfont-gm when "
            "installed, else symusic's MuseScore General (downloaded once)."
        },
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ...; left out: cuda if available."})


def print_composers(model: str, vocabulary: MusicVocabulary) -> None:
    """The composers a model has tokens for, most training pieces first: the ones worth asking for."""
    pieces = vocabulary.training_pieces
    names = vocabulary.most_trained()
    print(f"{len(names)} composers of {model}, with their training pieces (most first):")
    for name in names:
        print(f"  {name:<24} {pieces.get(name, 0) if pieces else '?':>6}")
    if not pieces:
        print("(this model's tokenizer does not record its training pieces)")
    print(
        f"Composers with fewer than {WELL_TRAINED} pieces are barely learned. "
        f"--composers {vocabulary.unknown} asks for no composer ({pieces.get(vocabulary.unknown, '?')} pieces)."
    )


def print_conditions(model: str, vocabulary: MusicVocabulary) -> None:
    """The composers, then the values of every other condition the model knows."""
    print_composers(model, vocabulary)
    others = [kind for kind in vocabulary.kinds if kind != "composer"]
    for kind in others:
        pieces = vocabulary.condition_pieces.get(kind, {})
        values = sorted(vocabulary.values(kind), key=lambda value: (-pieces.get(value, 0), value))
        print(f"--{kind}: " + ", ".join(f"{value} ({pieces.get(value, 0)})" if pieces else value for value in values))
    if not others:
        print("This model knows no other condition (genre, tempo and mode come with MidiCaps training data).")


def other_conditions(args: Arguments) -> dict[str, str | float]:
    """--genre, --tempo (a number: beats per minute) and --mode, where given."""
    given = {"genre": args.genre, "tempo": args.tempo, "mode": args.mode}
    if args.tempo and args.tempo.replace(".", "", 1).isdigit():
        given["tempo"] = float(args.tempo)
    return {kind: value for kind, value in given.items() if value}


def composer_names(args: Arguments, vocabulary: MusicVocabulary) -> list[str]:
    """--composers, or when it is left out the default four, or no composer where another
    condition is asked for or the model knows no composer."""
    if args.composers is not None:
        return list(dict.fromkeys(name.strip() for name in args.composers.split(",") if name.strip()))
    if other_conditions(args) or not vocabulary.composers:
        return [vocabulary.unknown]
    return [name.strip() for name in DEFAULT_COMPOSERS.split(",")]


def check(args: Arguments) -> None:
    """What can be checked here, before anything slow (the Hub, a model, a soundfont download)."""
    if args.composers is not None and not args.composers.strip(", ") or args.length < 1 or args.num_samples < 1:
        raise ValueError("--composers needs at least one name, --length and --num_samples positive numbers")
    if args.prompt and not Path(args.prompt).is_file():
        raise FileNotFoundError(f"no prompt file {args.prompt}: give a MIDI file for the samples to continue")
    if args.render not in (None, "wav"):
        raise ValueError(f"--render {args.render}: only wav is supported")
    if args.format not in ("mid", "musicxml"):
        raise ValueError(f"--format {args.format}: choose mid or musicxml")
    if args.format == "musicxml" and not music21_available():
        raise ValueError(MISSING_MUSIC21)


MODEL_INSTEAD = "give a model folder or a family (transformer, mamba, xlstm), or leave --model out for the bundled one"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = CommandParser(Arguments)
    (args,) = parser.parse(argv)
    with parser.failures():
        check(args)
        model, model_name = resolve_model(args.model)
        soundfont = find_soundfont(args.soundfont) if args.render else None
        with hub_access("model", model, MODEL_INSTEAD):
            if args.list_composers or args.list_conditions:
                vocabulary = MusicVocabulary(model)  # the tokenizer alone: no model to load
            else:
                started = time.perf_counter()
                results = generate(args, model)
    if args.list_composers or args.list_conditions:
        (print_conditions if args.list_conditions else print_composers)(model, vocabulary)
        return []
    seconds = time.perf_counter() - started
    rows = write_samples(results, args, Path(args.output_dir) / model_name, soundfont)
    print_summary(rows, generated=sum(r["new_tokens"] for r in rows), seconds=seconds)
    return rows


def generate(args: Arguments, model: str) -> list[dict]:
    """All samples in one pipeline call; with --stream, the call samples on this thread and
    another prints the notes as they come. (Sampling on a second thread after this one loaded
    the model makes PyTorch's OpenMP workers sleep between operations, libgomp's rule once more
    threads than cores are its own: the bundled model streamed 1,024 tokens 12-27 % slower.)"""
    generator = pipeline(
        "midi-generation", model=model, pipeline_class=modeling.MidiGenerationPipeline, device=args.device
    )
    composers = composer_names(args, generator.vocabulary)
    settings = {
        "composer": composers,
        **other_conditions(args),
        "num_return_sequences": args.num_samples,
        "max_new_tokens": args.length,
        "min_new_tokens": 0 if args.allow_early_end else args.length,
        "prompt": args.prompt,
        "guidance_scale": args.guidance_scale,
        "guidance_conditions": [k.strip() for k in args.guidance_conditions.split(",")]
        if args.guidance_conditions
        else None,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
        "progress_bar": not args.stream,
        "musicxml": args.format == "musicxml",
    }
    if not args.stream:
        return generator(**settings)
    streamer = modeling.NoteStreamer(generator)
    with ThreadPoolExecutor(1) as pool:
        printing = pool.submit(print_notes, streamer, composers, args.num_samples)
        results = generator(**settings, streamer=streamer)  # a failing call ends the stream too
        printing.result()
    return results


def print_notes(streamer: modeling.NoteStreamer, composers: list[str], num_samples: int) -> None:
    """A line per note, as the streamer gives them."""
    for item in streamer:
        composer, sample = composers[item["row"] // num_samples], item["row"] % num_samples
        for note in item["notes"]:
            name = f"{PITCH_NAMES[note['pitch'] % 12]}{note['pitch'] // 12 - 1}"
            print(
                f"{composer:<12} {sample:>2}  beat {note['start']:7.2f}  {name:<4} ({note['pitch']:3d})  "
                f"{note['duration']:.2f} beats  velocity {note['velocity']}"
            )


def sample_label(result: dict) -> str:
    """What a sample was asked for, as a folder name: `bach`, `jazz-fast`, `Unknown` for nothing."""
    composer = result["composer"]
    values = [str(v) for kind, v in result["conditions"].items() if kind != "composer" and v]
    named = [composer] if composer and composer.lower() != "unknown" else []
    return "-".join(named + values) or (composer or "Unknown")


def write_samples(results: list[dict], args: Arguments, folder: Path, soundfont: Path | None) -> list[dict]:
    """Write each result's files; return its summary row."""
    rows = []
    for i, result in enumerate(results):
        sample = i % args.num_samples
        path = folder / sample_label(result).replace("/", "_") / f"sample_{sample}.mid"  # an artist like AC/DC
        path.parent.mkdir(parents=True, exist_ok=True)
        for companion in (
            ".png",
            ".wav",
            ".musicxml",
        ):  # a roll or audio of an older sample would be taken for this one's
            path.with_suffix(companion).unlink(missing_ok=True)
        path.write_bytes(result["midi"])
        if "musicxml" in result:
            path.with_suffix(".musicxml").write_bytes(result["musicxml"])
        if args.plot and result["score"].note_num():
            figure = piano_roll(result["score"], f"{sample_label(result)}, sample {sample}")
            figure.savefig(path.with_suffix(".png"), dpi=100)
        if soundfont is not None:
            write_wav(result["score"], path.with_suffix(".wav"), soundfont)
        pitches = [note.pitch for track in result["score"].tracks for note in track.notes]
        rows.append(
            {
                "file": str(path),
                "composer": result["composer"],
                "notes": len(pitches),
                "seconds": result["seconds"],
                "pitch_range": f"{min(pitches)}-{max(pitches)}" if pitches else "-",
                "new_tokens": result["new_tokens"],
            }
        )
    return rows


def print_summary(rows: list[dict], generated: int, seconds: float) -> None:
    width = max(len(r["file"]) for r in rows)
    print(f"\n{'file':<{width}}  {'composer':<12} {'notes':>6} {'seconds':>8} {'pitches':>8}")
    for r in rows:
        print(f"{r['file']:<{width}}  {r['composer']:<12} {r['notes']:>6} {r['seconds']:>8.1f} {r['pitch_range']:>8}")
    print(f"\n{generated} tokens in {seconds:.1f} s: {generated / seconds:.0f} tokens/s (all samples in one batch)")


if __name__ == "__main__":
    main()
