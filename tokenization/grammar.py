"""A decoding grammar derived from the tokenizer: which token may follow which.

miditok describes REMI's syntax as a graph of token types (`tokens_types_graph`:
Position -> Program -> Pitch -> Velocity -> Duration -> ...). We lift it to token ids:
a (BPE) token may follow another when the type of its first REMI token may follow the
type of the other's last REMI token. Around the music sit the frame tokens: BOS is
followed by a condition token, the condition by the start of a bar, any music token by
more music or EOS, EOS by BOS (packed training data) or PAD.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from .tokenizer import MusicTokenizer

FRAME_TYPES = ("PAD", "BOS", "EOS", "MASK")
MUSIC_START = "Bar"
CONDITION = "Condition"
VOID = "Void"  # an id that stands for no REMI token (the BPE word marker): never allowed


def token_type(token: str) -> str:
    return token.split("_", 1)[0]


class MusicGrammar:
    """Allowed-successor table over a tokenizer's ids, as a `[num_states, vocab_size]` mask.

    A state is the type of the last REMI token of the previous id (or a frame/condition
    state); `allowed[state_of[id]]` is the mask of ids that may come next.
    """

    def __init__(self, tokenizer: MusicTokenizer) -> None:
        graph = {
            t: {token_type(n) for n in nexts} - set(FRAME_TYPES)
            for t, nexts in tokenizer.base.tokens_types_graph.items()
        }
        music_types = sorted(t for t in graph if t not in FRAME_TYPES)
        if MUSIC_START not in music_types:
            raise ValueError(f"the tokenizer has no {MUSIC_START} tokens: the grammar needs REMI-style bars")
        states = [*music_types, *FRAME_TYPES, CONDITION, VOID]
        index = {name: i for i, name in enumerate(states)}
        first = []  # state of each id's first REMI token, and of its last one
        last = []
        for token_id in range(tokenizer.vocab_size):
            if token_id >= tokenizer.base_vocab_size:
                kinds = [CONDITION]
            else:
                kinds = [token_type(t) for t in tokenizer.base_tokens(token_id)] or [VOID]
            first.append(index[kinds[0]])
            last.append(index[kinds[-1]])
        successors = {t: graph.get(t, set()) | {"EOS"} for t in music_types}
        # MASK and VOID are never generated: after one given in a prompt, only the end may follow
        successors.update(
            {"PAD": {"PAD"}, "BOS": {CONDITION}, "EOS": {"BOS", "PAD"}, CONDITION: {MUSIC_START}}
            | dict.fromkeys(("MASK", VOID), {"EOS"})
        )
        first_state = torch.tensor(first)
        self.states = states
        self.state_of = torch.tensor(last)
        self.allowed = torch.stack(
            [torch.isin(first_state, torch.tensor([index[n] for n in successors[s]])) for s in states]
        )

    def next_mask(self, last_ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask `[batch, vocab]` of the ids allowed after each of `last_ids`."""
        return self.allowed.to(last_ids.device)[self.state_of.to(last_ids.device)[last_ids]]

    def accepts(self, ids: list[int]) -> bool:
        """Whether every step of `ids` is allowed by the grammar."""
        steps = torch.as_tensor(ids)
        return bool(self.allowed[self.state_of[steps[:-1]], steps[1:]].all())


class MusicGrammarLogitsProcessor(LogitsProcessor):
    """Sets the score of every token that may not follow the last one to -inf."""

    def __init__(self, grammar: MusicGrammar) -> None:
        self.grammar = grammar

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        vocab = scores.shape[-1]
        mask = self.grammar.next_mask(input_ids[:, -1])[:, :vocab]
        if mask.shape[-1] < vocab:  # a model with a padded embedding matrix: extra ids never allowed
            mask = torch.nn.functional.pad(mask, (0, vocab - mask.shape[-1]), value=False)
        return scores.masked_fill(~mask, float("-inf"))
