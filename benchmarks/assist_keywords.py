"""Does SmolLM2-135M use a short, plain statement of a user's interests in everyday answers?

    python benchmarks/assist_keywords.py [--keywords 5] [--threads 1] [--json PATH]

A ceiling check for the assist soft tokens: if the LLM does not weave even a plain text list
of what the user writes about into its answer, soft tokens that carry that list cannot do
better. On the evaluation pairs of `curp eval assist` (held-out users, held-out requests),
SmolLM2 (llama.cpp, greedy, 64 tokens, under the assist system message) answers three times:

- ``none``: the assist system message alone;
- ``keywords``: plus "They often write about: w1, w2, ..." with the user's most distinctive
  words (TF-IDF against the training users' histories, so that the words are not chosen by
  the evaluated users' own statistics, which the lexical score uses);
- ``keywords-shuffled``: another evaluated user's words.

The replies are scored as `curp eval assist` scores them (curp_chain.eval.assist).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from curp_chain.data.users import default_data_dir
from curp_chain.eval.assist import AssistScorer, summary
from curp_chain.interfaces.protocols import GenerationParams
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.runtime.defaults import open_llamacpp_backend
from curp_chain.runtime.prompt import ChatTurn, build_soft_prompt
from curp_chain.tasks.assist import AssistUser, candidates, load_users, words
from curp_chain.tasks.assist_task import ASSIST_SYSTEM, AssistTask
from curp_chain.tasks.base import TaskExample

COMMON = frozenset(
    """the a an and or but if of to in on at for with from by is are was were be been am i you
    he she it we they me my your his her its our their this that these those not no so do does
    did have has had will would can could should just like get got about what when where who
    how why all any some more most very too than then there here out up down over into as also
    really one time know think people want going make good new much many even well back only
    way thing things lol dont cant thats ive youre http https com www amp""".split()  # noqa: SIM905
)
"""Words too common to say anything about a user."""


def user_words(user: AssistUser) -> Counter[str]:
    return Counter(w.lower() for item in candidates(user) for w in words(item.text))


def keywords(users: Sequence[AssistUser], background: Sequence[AssistUser], k: int) -> dict:
    """Each user's ``k`` words of highest TF-IDF (idf over ``background``), words used at least
    twice by the user and by at least 3 background users (no names, no typos)."""
    frequency: Counter[str] = Counter()
    for other in background:
        frequency.update(set(user_words(other)))
    total = len(background)
    chosen = {}
    for user in users:
        score = {
            w: (1 + math.log(c)) * math.log((1 + total) / (1 + frequency[w]))
            for w, c in user_words(user).items()
            if w not in COMMON and len(w) > 2 and not w.isdigit() and c >= 2 and frequency[w] >= 3
        }
        chosen[user.user_id] = sorted(score, key=lambda w: -score[w])[:k]
    return chosen


def evaluation_words(
    k: int, limit: int | None = None
) -> tuple[list[TaskExample], dict[str, list[str]], dict[str, list[str]]]:
    """The evaluation pairs of `curp eval assist` (the first ``limit``), each evaluated user's
    ``k`` words, and for each user another evaluated user's words."""
    data = default_data_dir()
    examples = AssistTask().eval_examples(data, "dev")[:limit]
    held_out = {u.user_id: u for u in load_users(data, "held_out")}
    evaluated = sorted({e.user_id for e in examples})
    words_of = keywords([held_out[u] for u in evaluated], load_users(data, "train"), k)
    other = {u: words_of[evaluated[(i + 7) % len(evaluated)]] for i, u in enumerate(evaluated)}
    return examples, words_of, other


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keywords", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    examples, words_of, other = evaluation_words(args.keywords)
    backend = open_llamacpp_backend(n_threads=args.threads)
    params = GenerationParams(max_tokens=64, temperature=0.0, stop=("\n\n",))

    def reply(system: str, request: str) -> str:
        turns = [ChatTurn("system", system), ChatTurn("user", request)]
        prompt = build_soft_prompt(backend.chat_template, turns, None, backend.special_tokens)
        return "".join(c.text for c in backend.stream(prompt, params)).strip()

    def stating(chosen: dict) -> Callable[[TaskExample], str]:
        return lambda e: f"{ASSIST_SYSTEM} They often write about: {', '.join(chosen[e.user_id])}."

    variants: dict[str, Callable[[TaskExample], str]] = {
        "none": lambda e: ASSIST_SYSTEM,
        "keywords": stating(words_of),
        "keywords-shuffled": stating(other),
    }
    scorer = AssistScorer(examples, SentenceEncoder())
    result: dict = {"chance": scorer.chance, "n": len(examples), "keywords": words_of}
    for name, system in variants.items():
        replies = [reply(system(e), e.input) for e in tqdm(examples, desc=name)]
        result[name] = summary(scorer.score(replies, examples))
        result[f"{name}_samples"] = [
            {"user": e.user_id, "request": e.input, "reply": r}
            for e, r in list(zip(examples, replies, strict=True))[:6]
        ]
        show(name, result[name])
    write_result(args.json, result)


def show(name: str, metrics: dict) -> None:
    """One line of a variant's metrics, without their intervals."""
    shown = {m: round(v, 3) for m, v in metrics.items() if not m.endswith("_ci")}
    print(name, shown, flush=True)


def write_result(path: Path | None, result: dict) -> None:
    if path:
        path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
