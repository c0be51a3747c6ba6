"""A decoding grammar derived from miditok's token types: which token may follow which.

miditok describes REMI's syntax as a graph of token types (`tokens_types_graph`:
Position -> Program -> Pitch -> Velocity -> Duration -> ...). We lift it to token ids:
a (BPE) token may follow another when the type of its first REMI token may follow the
type of the other's last REMI token. Around the music sit the frame tokens: BOS is
followed by a condition token, the condition by the start of a bar, any music token by
more music or EOS, EOS by BOS (packed training data) or PAD.

The grammar is saved with the tokenizer (`to_dict`, in `music_tokenizer.json`) as two
small tables, so that generation applies it from the saved folder without this package.
"""

from __future__ import annotations

import torch

FRAME_TYPES = ("PAD", "BOS", "EOS", "MASK")
MUSIC_START = "Bar"
CONDITION = "Condition"
VOID = "Void"  # an id that stands for no REMI token (the BPE word marker): never allowed


def token_type(token: str) -> str:
    return token.split("_", 1)[0]


class MusicGrammar:
    """Allowed successors over a tokenizer's ids.

    A state is the type of one REMI token (or a frame/condition state). `follows[a, b]`
    says whether state `b` may come after state `a`; an id may follow another when the
    state of its first REMI token may follow the state of the other's last one. So
    `allowed = follows[:, first_state]` is a `[num_states, vocab_size]` mask and
    `allowed[last_state[id]]` the ids that may come after `id`.
    """

    def __init__(self, types_graph: dict[str, list[str]], id_types: list[list[str]]) -> None:
        """`types_graph`: miditok's `tokens_types_graph`; `id_types`: per id, the types of the
        REMI tokens it stands for (`[CONDITION]` for a condition token, `[]` for none)."""
        graph = {t: {token_type(n) for n in nexts} - set(FRAME_TYPES) for t, nexts in types_graph.items()}
        music_types = sorted(t for t in graph if t not in FRAME_TYPES)
        if MUSIC_START not in music_types:
            raise ValueError(f"the tokenizer has no {MUSIC_START} tokens: the grammar needs REMI-style bars")
        self.states = [*music_types, *FRAME_TYPES, CONDITION, VOID]
        index = {name: i for i, name in enumerate(self.states)}
        kinds = [types or [VOID] for types in id_types]
        first = [index[k[0]] for k in kinds]
        last = [index[k[-1]] for k in kinds]
        successors = {t: graph.get(t, set()) | {"EOS"} for t in music_types}
        # MASK and VOID are never generated: after one given in a prompt, only the end may follow
        successors.update(
            {"PAD": {"PAD"}, "BOS": {CONDITION}, "EOS": {"BOS", "PAD"}, CONDITION: {MUSIC_START}}
            | dict.fromkeys(("MASK", VOID), {"EOS"})
        )
        self.follows = torch.tensor([[b in successors[a] for b in self.states] for a in self.states])
        self.first_state = torch.tensor(first)
        self.last_state = torch.tensor(last)

    @property
    def allowed(self) -> torch.Tensor:
        return self.follows[:, self.first_state]

    def accepts(self, ids: list[int]) -> bool:
        """Whether every step of `ids` is allowed by the grammar."""
        steps = torch.as_tensor(ids)
        return bool(self.allowed[self.last_state[steps[:-1]], steps[1:]].all())

    def to_dict(self) -> dict[str, list]:
        """The tables as plain lists (JSON), what generation reads from a saved tokenizer."""
        return {
            "states": self.states,
            "follows": self.follows.int().tolist(),
            "first_state": self.first_state.tolist(),
            "last_state": self.last_state.tolist(),
        }
