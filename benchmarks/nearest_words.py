"""Does SmolLM2-135M use the words of the user's item nearest the request in an everyday answer?

    python benchmarks/nearest_words.py [--words 6] [--items 2] [--threads 1] [--json PATH]

A ceiling check for a query-aware soft token that carries an item's words. The teacher's
answers name their user through the one item nearest each request (docs/experiments.md, 19),
and a plain list of the user's most distinctive words was not used (entry 17). Here the words
come from the ``--items`` history items nearest the request (all-MiniLM-L6-v2 cosine, as the
query-aware token attends), so they fit the request. On the evaluation pairs of
`curp eval assist` (held-out users, held-out requests), SmolLM2 (llama.cpp, greedy, 64
tokens, under the assist system message) answers with:

- ``none``: the assist system message alone;
- ``nearest-words``: plus "Things they wrote about: w1, w2, ..." with the ``--words`` rarest
  words (idf over the training users) of the user's items nearest the request;
- ``nearest-words-other``: the same from another evaluated user's history, for the same
  request, so the words fit the request just as well but belong to someone else;
- ``nearest-item``: plus the nearest item itself as text ("One thing they wrote: ...").

The replies are scored as `curp eval assist` scores them (curp_chain.eval.assist); prompt
tokens are counted as the eval counts them.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from assist_keywords import COMMON, evaluation_words, show, write_result
from tqdm.auto import tqdm

from curp_chain.data.users import default_data_dir
from curp_chain.eval.assist import AssistScorer, summary
from curp_chain.interfaces.protocols import GenerationParams
from curp_chain.model.checkpoint import load_checkpoint
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.model.item_words import load_item_words, with_words
from curp_chain.runtime.defaults import open_llamacpp_backend
from curp_chain.runtime.prompt import ChatTurn, build_soft_prompt
from curp_chain.tasks.assist import load_users, words
from curp_chain.tasks.assist_task import ASSIST_SYSTEM, AssistTask
from curp_chain.tasks.base import TaskExample


class IdfWords:
    """Content words of a text, rarest first: idf over the training users' histories, words
    used by at least 3 of them (no handles, names or typos)."""

    def __init__(self) -> None:
        background = load_users(default_data_dir(), "train")
        frequency: Counter[str] = Counter()
        for user in background:
            frequency.update({w for item in user.items for w in words(item.text)})
        self.idf = {
            w: math.log((1 + len(background)) / (1 + f)) for w, f in frequency.items() if f >= 3
        }

    def __call__(self, texts: Sequence[str], k: int) -> list[str]:
        found = dict.fromkeys(
            w
            for text in texts
            for w in words(text)
            if w in self.idf and w not in COMMON and len(w) > 2 and not w.isdigit()
        )
        return sorted(found, key=lambda w: -self.idf[w])[:k]


class Nearest:
    """Each evaluated user's history items, ranked for a request by encoder cosine."""

    def __init__(self, examples: Sequence[TaskExample], encoder: SentenceEncoder):
        self.encoder = encoder
        self.items = {e.user_id: e.profile_texts for e in examples}
        self.vectors = {u: encoder.encode(list(t)) for u, t in self.items.items()}

    def __call__(self, user_id: str, request: str, k: int) -> list[str]:
        query = self.encoder.encode([request])[0]
        scores = self.vectors[user_id] @ query
        order = torch.as_tensor(scores).argsort(descending=True, stable=True).tolist()
        return [self.items[user_id][i] for i in order[:k]]


class CodeWords:
    """Words decoded from the codes of a user's items nearest the request (the served path:
    the bundled codebook, then the item-word decoder in ``folder``)."""

    def __init__(self, folder: Path, nearest: Nearest):
        model = load_checkpoint()
        self.decoder, self.encoder = load_item_words(folder), nearest.encoder
        with torch.no_grad():
            self.quantized = {
                user: model.quantizer.decode(
                    model.quantizer.encode(model.item_vectors(nearest.vectors[user], texts))
                )
                for user, texts in nearest.items.items()
            }

    def __call__(self, user_id: str, request: str) -> list[str]:
        query = self.encoder.encode([request])[0]
        return self.decoder.words_for(self.quantized[user_id], query)


def variants(
    examples: Sequence[TaskExample],
    nearest: Nearest,
    idf: IdfWords,
    args: argparse.Namespace,
    from_codes: CodeWords | None = None,
) -> dict[str, Callable[[TaskExample], list[ChatTurn]]]:
    """Each variant's turns for an evaluation pair."""
    users = sorted({e.user_id for e in examples})
    other = {u: users[(i + 7) % len(users)] for i, u in enumerate(users)}
    task = AssistTask()

    def placed(e: TaskExample, told: str, listing: str) -> list[ChatTurn]:
        if args.place == "system":
            return [ChatTurn("system", f"{ASSIST_SYSTEM} {told}"), ChatTurn("user", e.input)]
        if args.place == "compact":  # as served: curp_chain.model.item_words.with_words
            request = with_words(e.input, listing.removeprefix("- ").split(", "))
            return [ChatTurn("system", ASSIST_SYSTEM), ChatTurn("user", request)]
        request = f"{task.history_header}\n{listing}\n\n{task.history_footer}\n{e.input}"
        return [ChatTurn("system", ASSIST_SYSTEM), ChatTurn("user", request)]

    def stating(owner: Callable[[TaskExample], str]) -> Callable[[TaskExample], list[ChatTurn]]:
        def turns(e: TaskExample) -> list[ChatTurn]:
            chosen = ", ".join(idf(nearest(owner(e), e.input, args.items), args.words))
            return placed(e, f"Things they wrote about: {chosen}.", f"- {chosen}")

        return turns

    def item(e: TaskExample) -> list[ChatTurn]:
        texts = [" ".join(t.split()) for t in nearest(e.user_id, e.input, args.items)]
        listing = "\n".join(f"- {t}" for t in texts)
        return placed(e, f"Things they wrote: {' / '.join(texts)}", listing)

    def decoded(owner: Callable[[TaskExample], str]) -> Callable[[TaskExample], list[ChatTurn]]:
        def turns(e: TaskExample) -> list[ChatTurn]:
            chosen = ", ".join(from_codes(owner(e), e.input)) if from_codes else ""
            return placed(e, f"Things they wrote about: {chosen}.", f"- {chosen}")

        return turns

    return {
        "code-words": decoded(lambda e: e.user_id),
        "code-words-other": decoded(lambda e: other[e.user_id]),
        "none": lambda e: [ChatTurn("system", ASSIST_SYSTEM), ChatTurn("user", e.input)],
        "nearest-words": stating(lambda e: e.user_id),
        "nearest-words-other": stating(lambda e: other[e.user_id]),
        "nearest-items": item,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=6)
    parser.add_argument("--items", type=int, default=2)
    parser.add_argument("--place", choices=("system", "user", "compact"), default="system")
    parser.add_argument("--decoder", type=Path, help="item-word decoder folder, for code-words")
    parser.add_argument(
        "--variants", default="none,nearest-words,nearest-words-other,nearest-items"
    )
    parser.add_argument("--limit", type=int, default=None, help="first N evaluation pairs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    examples, _, _ = evaluation_words(1, args.limit)
    encoder = SentenceEncoder()
    backend = open_llamacpp_backend(n_threads=args.threads)
    params = GenerationParams(max_tokens=64, temperature=0.0, stop=("\n\n",))
    scorer = AssistScorer(examples, encoder)
    result: dict = {
        "chance": scorer.chance,
        "n": len(examples),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    nearest = Nearest(examples, encoder)
    from_codes = CodeWords(args.decoder, nearest) if args.decoder else None
    chosen = variants(examples, nearest, IdfWords(), args, from_codes)
    for name in args.variants.split(","):
        replies, tokens, samples = [], [], []
        for e in tqdm(examples, desc=name):
            turns = chosen[name](e)
            prompt = build_soft_prompt(backend.chat_template, turns, None, backend.special_tokens)
            replies.append("".join(c.text for c in backend.stream(prompt, params)).strip())
            tokens.append(backend.count_tokens(prompt.before + prompt.after))
            samples.append(
                {"user": e.user_id, "turns": [t.content for t in turns], "reply": replies[-1]}
            )
        result[name] = summary(scorer.score(replies, examples))
        result[name]["prompt_tokens"] = sum(tokens) / len(tokens)
        result[f"{name}_replies"] = samples
        show(name, result[name])
    write_result(args.json, result)


if __name__ == "__main__":
    main()
