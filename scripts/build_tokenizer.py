"""Build the music tokenizer for a MIDI source, save it, and print what it makes of the corpus.

    python scripts/build_tokenizer.py --sources bundled --bpe_vocab_size 1000 --output_dir outputs/tokenizer
    python scripts/build_tokenizer.py --sources drengskapur/midi-classical-music --bpe_vocab_size 20000

The composer tokens come from the sources' labels (all splits, so that a composer seen
only in validation still has a token); BPE is learned on their training split, mixed by
`--source_weights`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from command_line import CommandParser
from tokenization import mix_sources, skip_summary, tokenizer_for_sources
from tokenization.stats import corpus_table


@dataclass
class Arguments:
    sources: list[str] = field(
        default_factory=lambda: ["bundled"], metadata={"help": "Folders, hf://datasets/..., Hub dataset ids, bundled."}
    )
    source_weights: list[float] | None = field(
        default=None, metadata={"help": "How often BPE samples each source (one weight per source; default equal)."}
    )
    output_dir: str = field(default="outputs/tokenizer", metadata={"help": "Where the tokenizer is saved."})
    bpe_vocab_size: int = field(default=0, metadata={"help": "Learn BPE up to this vocabulary size (0: no BPE)."})
    bpe_max_files: int = field(default=2000, metadata={"help": "Training files used to learn BPE."})
    push_to_hub: bool = field(default=False, metadata={"help": "Also upload the tokenizer to hub_model_id."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo id, e.g. me/tokenizer-classical."})


def print_table(table: list[dict]) -> None:
    header = f"{'composer':<20} {'files':>6} {'notes':>9} {'tokens':>9} {'tok/note':>9} {'round trip':>11}"
    print(header)
    print("-" * len(header))
    for row in table:
        if row["composer"] == "total":
            print("-" * len(header))
        print(
            f"{row['composer']:<20} {row['files']:>6} {row['notes']:>9} {row['tokens']:>9} "
            f"{row['tokens_per_note']:>9.2f} {row['round_trip']:>10.2%}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = CommandParser(Arguments)
    (args,) = parser.parse(argv)
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id <user>/<name>")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tokenization.blocks").setLevel(logging.ERROR)  # the summary line reports skips

    with parser.failures():
        tokenizer = tokenizer_for_sources(args.sources, args.bpe_vocab_size, args.bpe_max_files, args.source_weights)
        tokenizer.save_pretrained(args.output_dir)
        if args.push_to_hub:
            print(f"pushed: {tokenizer.push_to_hub(args.hub_model_id)}")

    rows = tqdm(mix_sources(args.sources, repeat=False), desc="tokenizing", unit="file")
    table, skipped = corpus_table(tokenizer, rows)
    conditions = len(tokenizer) - tokenizer.base_vocab_size
    print(f"\ntokenizer: {len(tokenizer)} tokens ({tokenizer.base_vocab_size} REMI/BPE + {conditions} composer)")
    print(f"saved to {args.output_dir}\n")
    print_table(table)
    print(f"\n{skip_summary(skipped)}")


if __name__ == "__main__":
    main()
