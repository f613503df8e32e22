"""Do everyday answers identify their user when the history is about the user's life?

    python benchmarks/persona_ceiling.py [--personas 48] [--per-persona 2]
        [--teacher-gguf PATH] [--threads 1] [--json PATH]

The users of `curp eval assist` are Reddit college authors, PAN tweeters and Enron senders:
their histories rarely touch what an everyday request is about, and even the teacher reading
them as text names its user at 2.8x chance (README, "Everyday answers"). Persona-Chat
personas are histories of the other kind: a few facts about a life ("i have two dogs.").
This measures, on them, what SmolLM2-135M (llama.cpp, greedy, 64 tokens) makes of the facts
as plain text, the ceiling for soft tokens that carry them:

- ``none``: the assist system message alone;
- ``facts``: the assist system message, then the persona's facts as the eval's rag lists
  history items (in the user turn, under the assist task's header and footer);
- ``facts-other``: another persona's facts, the same way;
- ``teacher`` (with ``--teacher-gguf``): the teacher model reading the facts with its own
  prompt (curp_chain.tasks.assist.WORDINGS, "posts").

The requests are the held-out everyday requests; each persona gets ``--per-persona`` of them.
Replies are scored as `curp eval assist` scores them, among the personas evaluated.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from assist_keywords import show, write_result
from tqdm.auto import tqdm

from curp_chain.data.users import default_data_dir
from curp_chain.eval.assist import AssistScorer, summary
from curp_chain.interfaces.protocols import GenerationParams, SoftPromptBackend
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.runtime.defaults import open_llamacpp_backend
from curp_chain.runtime.prompt import ChatTurn, build_soft_prompt
from curp_chain.tasks.assist import WORDINGS, load_requests
from curp_chain.tasks.assist_task import ASSIST_SYSTEM, AssistTask
from curp_chain.tasks.base import ProfileItem, TaskExample
from curp_chain.tasks.personachat import PersonaChatTask

Turns = Callable[[TaskExample], list[ChatTurn]]


def persona_examples(personas: int, per_persona: int) -> list[TaskExample]:
    """``per_persona`` held-out requests for each of the first ``personas`` personas with at
    least 4 facts, the requests taken in turn so every persona gets different ones."""
    _, histories = PersonaChatTask().records(default_data_dir(), "dev")
    users = sorted(u for u, facts in histories.items() if len(facts) >= 4)[:personas]
    requests = load_requests("held_out")
    examples = []
    for index, user in enumerate(users):
        profile = tuple(ProfileItem(f"{user}:{i}", f.text) for i, f in enumerate(histories[user]))
        for k in range(per_persona):
            request = requests[(index * per_persona + k) % len(requests)]
            examples.append(
                TaskExample(
                    id=f"{user}:{request.id}",
                    user_id=user,
                    messages=(ChatTurn("system", ASSIST_SYSTEM), ChatTurn("user", request.text)),
                    gold="",
                    profile=profile,
                    source=request.text,
                )
            )
    return examples


def variants(examples: Sequence[TaskExample]) -> dict[str, Turns]:
    users = list(dict.fromkeys(e.user_id for e in examples))
    facts = {e.user_id: e.profile_texts for e in examples}
    other = {u: users[(i + 7) % len(users)] for i, u in enumerate(users)}
    task = AssistTask()

    def listing(owner: Callable[[TaskExample], str]) -> Turns:
        def turns(e: TaskExample) -> list[ChatTurn]:
            shown = "\n".join(f"- {f}" for f in facts[owner(e)])
            request = f"{task.history_header}\n{shown}\n\n{task.history_footer}\n{e.input}"
            return [ChatTurn("system", ASSIST_SYSTEM), ChatTurn("user", request)]

        return turns

    def teacher(e: TaskExample) -> list[ChatTurn]:
        system, user = WORDINGS["posts"]
        shown = "\n".join(f"- {f}" for f in facts[e.user_id])
        return [
            ChatTurn("system", system.format(items=shown)),
            ChatTurn("user", user.format(request=e.input)),
        ]

    return {
        "none": lambda e: list(e.messages),
        "facts": listing(lambda e: e.user_id),
        "facts-other": listing(lambda e: other[e.user_id]),
        "teacher": teacher,
    }


def replies(backend: SoftPromptBackend, turns: Turns, examples: Sequence[TaskExample], name: str):  # type: ignore[no-untyped-def]
    params = GenerationParams(max_tokens=64, temperature=0.0, stop=("\n\n",))
    written, tokens = [], []
    for e in tqdm(examples, desc=name):
        prompt = build_soft_prompt(backend.chat_template, turns(e), None, backend.special_tokens)
        written.append("".join(c.text for c in backend.stream(prompt, params)).strip())
        tokens.append(backend.count_tokens(prompt.before + prompt.after))
    return written, sum(tokens) / len(tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--personas", type=int, default=48)
    parser.add_argument("--per-persona", type=int, default=2)
    parser.add_argument("--teacher-gguf", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    examples = persona_examples(args.personas, args.per_persona)
    scorer = AssistScorer(examples, SentenceEncoder())
    result: dict = {"chance": scorer.chance, "n": len(examples), "personas": len(scorer.users)}
    smol = open_llamacpp_backend(n_threads=args.threads)
    chosen = variants(examples)
    names = ["none", "facts", "facts-other"] + (["teacher"] if args.teacher_gguf else [])
    for name in names:
        backend = smol
        if name == "teacher":
            backend = open_llamacpp_backend(str(args.teacher_gguf), n_threads=args.threads)
        written, tokens = replies(backend, chosen[name], examples, name)
        result[name] = summary(scorer.score(written, examples)) | {"prompt_tokens": tokens}
        result[f"{name}_samples"] = [
            {"user": e.user_id, "facts": e.profile_texts, "request": e.input, "reply": r}
            for e, r in list(zip(examples, written, strict=True))[:8]
        ]
        show(name, result[name])
    write_result(args.json, result)


if __name__ == "__main__":
    main()
