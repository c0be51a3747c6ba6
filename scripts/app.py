"""The web app: compose with a trained model in the browser (Gradio).

    python scripts/app.py                      # http://127.0.0.1:7860
    python scripts/app.py --model outputs/mamba-small --port 8000
    GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=7861 python scripts/app.py    # as on a Space

Choose a model (a bundled one, a folder, a Hub repo id), a composer from that model's own
list (and, for a model trained on MidiCaps, a genre, tempo and mode), the length and the
sampling settings, optionally a MIDI file to continue; the piano roll grows while the model
writes, then the page plays the audio and offers the `.mid` (and, where music21 is installed,
the MusicXML score). Each call runs in Gradio's queue with its own files, so users at once
never see each other's pieces.
On a Hugging Face Space, this repository with `app_file: scripts/app.py` in its README runs it.
"""

from __future__ import annotations

import functools
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import symusic
from transformers import pipeline

import modeling
from allocator import limit_arenas
from command_line import CommandParser
from evaluation.rendering import find_soundfont, piano_roll, write_wav
from modeling.catalog import available_models, default_model, resolve_model
from modeling.musicxml import music21_available
from modeling.pipeline_midi_generation import MusicVocabulary, read_prompt

# symusic's synthesizer renders every track over the whole piece: an untrained model's 107
# tracks of 255 s did not render in 100 s here. Past this many track-seconds, no audio.
MAX_TRACK_SECONDS = 7200
# What one request may ask for (docs/app.md: the load test and the bad uploads behind them).
MAX_LENGTH = 2048  # tokens of a piece
MAX_UPLOAD = "5mb"  # a MIDI file to continue: more than any piece of the classical set or Lakh
MAX_PROMPT_NOTES = 10_000  # its notes: a long piano piece has a few thousand
SCORES = music21_available()  # MusicXML downloads (the [score] extra)


@dataclass
class Arguments:
    model: str | None = field(default=None, metadata={"help": "The model chosen first; left out: the bundled one."})
    host: str | None = field(
        default=None,
        metadata={
            "help": "Address to serve on (0.0.0.0: every interface); left out: $GRADIO_SERVER_NAME, else 127.0.0.1."
        },
    )
    port: int | None = field(
        default=None, metadata={"help": "Port to serve on; left out: $GRADIO_SERVER_PORT, else 7860."}
    )
    soundfont: str | None = field(
        default=None, metadata={"help": "General MIDI soundfont for the audio; left out: as generate.py finds one."}
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ...; left out: cuda if available."})
    concurrency: int = field(default=1, metadata={"help": "Pieces composed at once; other requests queue."})
    max_queue: int = field(
        default=16, metadata={"help": "Requests that may wait; past that a user is told the queue is full."}
    )


@functools.lru_cache(maxsize=4)
def load(model: str, device: str | None) -> modeling.MidiGenerationPipeline:
    """A pipeline per model, loaded once and shared by every user (it holds no per-call state).

    Loaded on a thread that ends with the load, as each piece is composed on a thread of its
    own: PyTorch's OpenMP workers belong to the thread that used them and go when it ends, and
    while a long-lived thread (the server's) keeps a set, libgomp has more threads than cores
    and puts the composing thread's workers to sleep between operations (the bundled model:
    512 tokens in 7.7 s instead of 6.1-6.4)."""
    with ThreadPoolExecutor(1) as once:
        return once.submit(
            pipeline, "midi-generation", model=model, pipeline_class=modeling.MidiGenerationPipeline, device=device
        ).result()


def composers(model: str, device: str | None) -> list[str]:
    """The model's composers, those with the most training pieces first, then `Unknown` (none)."""
    vocabulary = load(resolve_model(model)[0], device).vocabulary
    return [*vocabulary.most_trained(), vocabulary.unknown]


def composer_choices(model: str, *, device: str | None) -> gr.Dropdown:
    """The composer list for another model; a model that cannot be loaded says why, in one sentence."""
    try:
        names = composers(model, device)
    except (ValueError, OSError) as error:
        raise one_sentence(error) from None
    return gr.Dropdown(choices=names, value=names[0])


OTHER_CONDITIONS = ("genre", "tempo", "mode")
ANY = "Any"  # a condition left open


def condition_lists(vocabulary: MusicVocabulary) -> list[dict]:
    """The genre, tempo and mode lists of a model (as `gr.Dropdown` arguments), each shown only
    where the model has that condition (a MidiCaps-trained one)."""
    return [
        {"choices": [ANY, *vocabulary.values(kind)], "value": ANY, "visible": kind in vocabulary.kinds}
        for kind in OTHER_CONDITIONS
    ]


def other_choices(model: str, *, device: str | None) -> list[gr.Dropdown]:
    """The genre, tempo and mode lists for another model."""
    try:
        vocabulary = load(resolve_model(model)[0], device).vocabulary
    except (ValueError, OSError) as error:
        raise one_sentence(error) from None
    return [gr.Dropdown(**arguments) for arguments in condition_lists(vocabulary)]


def one_sentence(error: Exception) -> gr.Error:
    return gr.Error(str(error).splitlines()[0] if str(error) else type(error).__name__, print_exception=False)


def checked_prompt(upload: str | None) -> symusic.Score | None:
    """The uploaded MIDI file read (a broken one is a sentence) and small enough to continue,
    before any sampling. (Gradio holds the other inputs to their sliders' ranges.)"""
    if upload is None:
        return None
    prompt = read_prompt(upload)
    if prompt.note_num() > MAX_PROMPT_NOTES:
        raise ValueError(
            f"the MIDI file to continue has {prompt.note_num():,} notes; the app takes {MAX_PROMPT_NOTES:,}"
        )
    return prompt


def compose(
    model,
    composer,
    length,
    temperature,
    top_p,
    guidance_scale,
    seed,
    upload,
    genre=ANY,
    tempo=ANY,
    mode=ANY,
    *,
    device,
    soundfont,
):
    """Yield (piano roll, audio, MusicXML file, MIDI file, status) while the model writes, then the
    finished piece (its MusicXML score where music21 is installed)."""
    others = {kind: value for kind, value in zip(OTHER_CONDITIONS, (genre, tempo, mode), strict=True) if value != ANY}
    title = " ".join([composer, *others.values()])
    try:
        generator = load(resolve_model(model)[0], device)
        prompt = checked_prompt(upload)
    except (ValueError, OSError) as error:
        raise one_sentence(error) from None
    streamer = modeling.NoteStreamer(generator, interval=0.5)
    settings = {
        "max_new_tokens": int(length),
        "temperature": temperature,
        "top_p": top_p,
        "guidance_scale": guidance_scale,
        "seed": int(seed),
        "prompt": prompt,
        "musicxml": SCORES,
        **others,
    }
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(generator, composer, streamer=streamer, **settings)
        notes = 0
        for item in streamer:
            notes += len(item["notes"])
            yield piano_roll(item["score"], f"{title}: {notes} notes so far"), None, None, None, f"{notes} notes..."
        try:
            [piece] = call.result()
        except (ValueError, OSError) as error:  # an unreadable upload, an unknown composer or genre
            raise one_sentence(error) from None
    folder = Path(tempfile.mkdtemp(prefix="midi-lm-"))  # this call's own files
    midi = folder / f"{'-'.join([composer, *others.values()]).replace('/', '_')}.mid"
    midi.write_bytes(piece["midi"])
    score = midi.with_suffix(".musicxml") if "musicxml" in piece else None
    if score is not None:
        score.write_bytes(piece["musicxml"])
    status = f"{piece['score'].note_num()} notes, {piece['seconds']:.1f} seconds of music"
    try:
        if piece["seconds"] * len(piece["score"].tracks) > MAX_TRACK_SECONDS:
            raise OSError(f"{len(piece['score'].tracks)} tracks of {piece['seconds']:.0f} s take too long to render")
        audio = write_wav(piece["score"], midi.with_suffix(".wav"), find_soundfont(soundfont))
    except OSError as error:
        audio, status = None, f"{status}; no audio: {str(error).splitlines()[0]}"
    roll = piano_roll(piece["score"], f"{title}: {status}")
    yield roll, str(audio) if audio else None, str(score) if score else None, str(midi), status


def model_choices(first: str) -> list[tuple[str, str]]:
    """(what the page shows, what loads) for every model here, `first` first: a folder given by
    its absolute path (a bundled model) shows by its name, so no machine's path is on the page."""
    models = [first, *(m for m in available_models() if m != first)]
    return [(Path(m).name if Path(m).is_absolute() else m, m) for m in models]


def build(args: Arguments) -> gr.Blocks:
    first = args.model or str(default_model())
    with gr.Blocks(title="midi-lm") as app:
        gr.Markdown("# midi-lm\nA language model over MIDI writes a piece in the style of the composer you choose.")
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Dropdown(
                    model_choices(first),
                    value=first,
                    label="Model (a folder or a Hub repo id may be typed)",
                    allow_custom_value=True,
                )
                names = composers(first, args.device)
                composer = gr.Dropdown(names, value=names[0], label="Composer (most training pieces first)")
                lists = condition_lists(load(resolve_model(first)[0], args.device).vocabulary)
                others = [
                    gr.Dropdown(**a, label=kind.title()) for kind, a in zip(OTHER_CONDITIONS, lists, strict=True)
                ]
                length = gr.Slider(64, MAX_LENGTH, value=512, step=64, label="Length (tokens)")
                temperature = gr.Slider(0.5, 1.5, value=1.0, step=0.05, label="Temperature")
                top_p = gr.Slider(0.5, 1.0, value=0.95, step=0.01, label="Top-p")
                guidance = gr.Slider(1.0, 4.0, value=1.0, step=0.5, label="Guidance scale (follows the conditions)")
                seed = gr.Number(0, precision=0, label="Seed")
                upload = gr.File(label="A MIDI file to continue (optional)", file_types=[".mid", ".midi"])
                button = gr.Button("Compose", variant="primary")
            with gr.Column(scale=2):
                status = gr.Markdown("")
                roll = gr.Plot(label="Piano roll")
                audio = gr.Audio(label="Listen", type="filepath")
                score = gr.File(label="Download the score (MusicXML, for MuseScore or Sibelius)", visible=SCORES)
                midi = gr.File(label="Download the MIDI file")
        model.change(functools.partial(composer_choices, device=args.device), model, composer, api_name="composers")
        model.change(functools.partial(other_choices, device=args.device), model, others, api_name="conditions")
        run = functools.partial(compose, device=args.device, soundfont=args.soundfont)
        inputs = [model, composer, length, temperature, top_p, guidance, seed, upload, *others]
        button.click(run, inputs, [roll, audio, score, midi, status], api_name="compose")
    return app


def launch(app: gr.Blocks, args: Arguments, **options) -> None:
    """Serve `app` with the queue and the upload limit of `args` and this file. Address and port
    left out (None) go to Gradio, which reads GRADIO_SERVER_NAME and GRADIO_SERVER_PORT."""
    app.queue(default_concurrency_limit=args.concurrency, max_size=args.max_queue)
    app.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD, **options)


def main(argv: list[str] | None = None) -> None:
    parser = CommandParser(Arguments)
    (args,) = parser.parse(argv)
    limit_arenas(2)  # each request runs in a new thread: memory stays flat under load
    with parser.failures():  # the first model and a soundfont asked for, before the server starts
        if args.soundfont:
            find_soundfont(args.soundfont)
        app = build(args)
    launch(app, args)


if __name__ == "__main__":
    main()
