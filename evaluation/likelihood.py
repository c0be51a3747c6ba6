"""Held-out likelihood of a language model: next-token negative log-likelihood per position,
summed over batches and processes, as loss, bits per token and bits per note (notes make
models with different vocabularies comparable)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from accelerate import Accelerator


def token_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token negative log-likelihood in nats of each labelled position, `[batch, length - 1]`
    (0 where the label is -100)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(), batch["labels"][:, 1:], ignore_index=-100, reduction="none"
    )


def summed_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token negative log-likelihoods in nats, number of predicted tokens)."""
    return token_nll(model, batch).sum(), (batch["labels"][:, 1:] != -100).sum()


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[dict], accelerator: Accelerator | None, notes: int) -> dict:
    """Loss (nats per token), bits per token and bits per note over every rank's batches.

    `notes` is the number of notes in the whole evaluation set (all ranks together). Without
    an `accelerator` (one process) the batches go to the model's device. The model is left
    in the mode it was in.
    """
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for batch in batches:
        nll, count = summed_nll(model, {k: v.to(device) for k, v in batch.items()})
        total += torch.stack([nll.double(), count.double()])
    model.train(training)
    if accelerator is not None:
        total = accelerator.reduce(total, reduction="sum")
    nll, count = total.tolist()
    return nll_summary(nll, count, notes)


def nll_summary(nll: float, count: int, notes: int) -> dict:
    """Loss (nats per token), bits per token and bits per note from summed nats over `count` tokens."""
    if not count:
        raise ValueError("the evaluation set has no tokens to predict: check the validation source")
    return {
        "loss": nll / count,
        "bits_per_token": nll / count / math.log(2),
        "bits_per_note": nll / notes / math.log(2) if notes else float("nan"),
        "tokens": int(count),
    }
