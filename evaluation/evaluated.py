"""The models evaluate.py judges, behind one interface (`EvaluatedModel`): a language model of
any of the three families, sampled through the `midi-generation` pipeline, or the n-gram
baseline. Each gives its held-out likelihood, its likelihood identification (None where the
model cannot use its condition throughout) and samples per composer; `sample_and_judge`
turns one guidance scale's samples into the classifier's verdict and music statistics."""

from __future__ import annotations

import functools
import time
from collections import Counter
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from transformers import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    TopPLogitsWarper,
    pipeline,
)

import modeling
from modeling.adapters import ADAPTER_CONFIG
from modeling.ngram import CONFIG_NAME as NGRAM_CONFIG
from modeling.ngram import NGramModel
from modeling.pipeline_midi_generation import GrammarLogitsProcessor
from tokenization import BlockCollator, MusicTokenizer, evaluation_blocks, skip_summary
from tokenization.hub import hub_access
from tokenization.tokenizer import CONDITIONS_FILE

from .classification import Judge
from .identification import POSITIONS, bootstrap_interval, identification, identification_windows, window_tokens
from .likelihood import evaluate, nll_summary
from .metrics import mean_distances, set_distances, set_histograms, topk_accuracy


class EvaluatedModel(Protocol):
    """What evaluate.py asks of a model: its tokenizer and family, its parameter count (None for
    an n-gram), whether guidance applies, and the three measurements."""

    name: str
    tokenizer: MusicTokenizer
    family: str
    parameters: int | None
    guidable: bool

    def likelihood(self, rows: list[dict], block_size: int, batch_size: int) -> dict: ...

    def identification(
        self,
        pieces: list[dict],
        composers: list[str],
        judge: Judge | None,
        tokens: int,
        batch_size: int,
        kind: str = "composer",
    ) -> dict | None: ...

    def generate(
        self, composers: list[str], num_samples: int, length: int, top_p: float, guidance_scale: float, seed: int
    ) -> list[list[int]]: ...


def load_evaluated(name: str, device: str) -> EvaluatedModel:
    """The model in folder (or Hub repo) `name`: an n-gram folder of `train_ngram.py`, else a
    language model."""
    folder = Path(name)
    if folder.is_dir() and not any(
        (folder / config).is_file() for config in ("config.json", NGRAM_CONFIG, ADAPTER_CONFIG)
    ):
        holds = "a tokenizer but no model" if (folder / CONDITIONS_FILE).is_file() else "no model"
        raise FileNotFoundError(
            f"{name} holds {holds} (no config.json): give train.py's or train_ngram.py's --output_dir"
        )
    with hub_access("model", name, "give a model folder (train.py's or train_ngram.py's --output_dir)"):
        tokenizer = MusicTokenizer.from_pretrained(name)
        if (folder / NGRAM_CONFIG).is_file():
            return NGramEvaluated(name, tokenizer)
        return LanguageModelEvaluated(name, tokenizer, device)


def no_usable_piece(skipped: Counter) -> ValueError:
    return ValueError(
        f"no usable piece in the test split ({skip_summary(skipped)}): give a source with readable MIDI there"
    )


class LanguageModelEvaluated:
    guidable = True

    def __init__(self, name: str, tokenizer: MusicTokenizer, device: str) -> None:
        self.name, self.tokenizer, self.device = name, tokenizer, device
        self.model = modeling.load_model(name).to(device).float()  # a fine-tuned adapter folder too
        self.family = self.model.config.model_type
        self.parameters = sum(p.numel() for p in self.model.parameters())

    @functools.cached_property
    def generator(self) -> modeling.MidiGenerationPipeline:
        """The pipeline, made once for every guidance scale (it reads the music tokenizer)."""
        return pipeline(
            "midi-generation",
            model=self.model,
            music_tokenizer=self.name,
            pipeline_class=modeling.MidiGenerationPipeline,
            device=self.device,
        )

    def likelihood(self, rows: list[dict], block_size: int, batch_size: int) -> dict:
        """Bits per token and per note over the test pieces, in blocks as `train.py` evaluates."""
        size = min(block_size, getattr(self.model.config, "n_positions", block_size))
        blocks, notes, skipped = evaluation_blocks(rows, self.tokenizer, size)
        if not blocks:
            raise no_usable_piece(skipped)
        batches = BlockCollator(self.tokenizer.pad_token_id).batches(blocks, batch_size)
        return evaluate(self.model, batches, None, notes) | {"notes": notes}

    def identification(
        self,
        pieces: list[dict],
        composers: list[str],
        judge: Judge | None,
        tokens: int,
        batch_size: int,
        kind: str = "composer",
    ) -> dict:
        """Likelihood identification of `kind` (candidates `composers`) on the opening and middle
        windows of the test pieces, with bootstrap intervals and the classifier's accuracy on the
        same windows (on their first `window_tokens`, the length it was trained on; only with a
        judge that shares the model's vocabulary)."""
        length = window_tokens(self.model.config, tokens, self.tokenizer)
        windows = identification_windows(pieces, composers, length, self.tokenizer, kind)
        found = identification(self.model, self.tokenizer, windows, composers, batch_size, kind=kind)
        ranked = judge.rank([w.music for w in windows]) if judge is not None and judge.shared else None
        for position in POSITIONS:
            if position not in found:
                continue
            result = found[position]
            result["interval"] = bootstrap_interval(result["truth"], result["named"])
            if ranked is not None:
                named = [r for r, w in zip(ranked, windows, strict=True) if w.position == position]
                result["classifier"] = topk_accuracy(result["truth"], named)["mean"]["top1"]
        return found

    def generate(
        self, composers: list[str], num_samples: int, length: int, top_p: float, guidance_scale: float, seed: int
    ) -> list[list[int]]:
        """`num_samples` token sequences per composer (composer-major order), each `length` new tokens."""
        results = self.generator(
            composer=composers,
            num_return_sequences=num_samples,
            max_new_tokens=length,
            min_new_tokens=length,
            top_p=top_p,
            guidance_scale=guidance_scale,
            seed=seed,
            progress_bar=True,
        )
        return [r["tokens"] for r in results]


class NGramEvaluated:
    """The n-gram baseline: it sees the condition only in its first steps, so it has no
    likelihood identification and no unconditional branch to guide with."""

    guidable = False
    family = "ngram"
    parameters = None

    def __init__(self, name: str, tokenizer: MusicTokenizer) -> None:
        self.name, self.tokenizer = name, tokenizer
        self.ngram = NGramModel.from_pretrained(name)

    def likelihood(self, rows: list[dict], block_size: int, batch_size: int) -> dict:
        blocks, notes, skipped = evaluation_blocks(rows, self.tokenizer, block_size)
        if not blocks:
            raise no_usable_piece(skipped)
        scored = (self.ngram.sequence_nll(b["input_ids"], b["labels"]) for b in blocks)
        nll, count = map(sum, zip(*scored, strict=True))
        return nll_summary(nll, count, notes) | {"notes": notes}

    def identification(
        self,
        pieces: list[dict],
        composers: list[str],
        judge: Judge | None,
        tokens: int,
        batch_size: int,
        kind: str = "composer",
    ) -> None:
        return None

    def generate(
        self, composers: list[str], num_samples: int, length: int, top_p: float, guidance_scale: float, seed: int
    ) -> list[list[int]]:
        prompts = [self.tokenizer.prefix_ids({"composer": c}) for c in composers for _ in range(num_samples)]
        processors = LogitsProcessorList(
            [
                MinNewTokensLengthLogitsProcessor(self.tokenizer.prefix_length, length, self.tokenizer.eos_token_id),
                GrammarLogitsProcessor(self.tokenizer.grammar().to_dict()),
                TopPLogitsWarper(top_p),
            ]
        )
        generator = torch.Generator().manual_seed(seed)
        return self.ngram.generate(prompts, length, self.tokenizer.eos_token_id, processors, generator)


def sample_and_judge(
    evaluated: EvaluatedModel,
    judge: Judge,
    composers: list[str],
    real_histograms: dict,
    folder: Path,
    *,
    guidance_scale: float,
    num_samples: int,
    length: int,
    top_p: float,
    seed: int,
) -> tuple[dict, dict]:
    """Sample, judge and measure at one guidance scale; the samples go to `folder/<composer>/`.
    Returns the run's results and the generated histograms per composer."""
    started = time.perf_counter()
    samples = evaluated.generate(composers, num_samples, length, top_p, guidance_scale, seed)
    seconds = time.perf_counter() - started
    scores = [evaluated.tokenizer.decode(ids) for ids in samples]
    requested = [c for c in composers for _ in range(num_samples)]
    for i, (score, composer) in enumerate(zip(scores, requested, strict=True)):
        (folder / composer).mkdir(parents=True, exist_ok=True)
        score.dump_midi(str(folder / composer / f"sample_{i % num_samples}.mid"))
    musics = judge.read(samples, scores)
    ranked = judge.rank(musics)
    accuracy = topk_accuracy(requested, ranked) | {
        "interval": bootstrap_interval(requested, [r[0] if r else "" for r in ranked]),
        "unreadable": sum(not m for m in musics),
        # what the classifier named, per requested composer: shows a bias towards one class
        "named": {
            c: dict(Counter(r[0] for r, q in zip(ranked, requested, strict=True) if r and q == c)) for c in composers
        },
    }
    histograms = {c: set_histograms(s for s, r in zip(scores, requested, strict=True) if r == c) for c in composers}
    distances = {c: set_distances(real_histograms[c], histograms[c]) for c in composers}
    new_tokens = sum(len(ids) - 2 for ids in samples)
    run = {
        "guidance_scale": guidance_scale,
        "classifier": accuracy,
        "distances": distances,
        "mean_distances": mean_distances(distances),
        "notes_per_sample": float(np.mean([s.note_num() for s in scores])),
        "empty_samples": sum(s.note_num() == 0 for s in scores),
        "generation": {
            "seconds": seconds,
            "batch": len(samples),
            "new_tokens": new_tokens,
            "ms_per_token": 1000 * seconds / new_tokens,
            "ms_per_step": 1000 * seconds / length,
        },
    }
    return run, histograms
