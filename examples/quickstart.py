"""Two users with clearly different lives send the same requests; beside each reply, a
measured effect of their soft tokens.

maya is a marathon runner who texts in lowercase, with "lol" and no apostrophes; theo reads
fantasy novels, bakes sourdough and writes formal, punctuated prose. Both send:

- **everyday requests** with no system message ("What should I cook for dinner tonight?"):
  the model answers *them*, shaped by what their history says (the assist checkpoint: its
  soft tokens, and a few words read off the codes of their items nearest the request, placed
  before it). Beside each reply: those words, and which user's history its content is nearest
  (all-MiniLM-L6-v2 cosine to the mean of each user's items), and the same for the reply to
  no user;
- **write-as-the-user requests**, the three kinds the write checkpoint was trained for, each
  with the system message and instruction it was trained with (rewrite a tweet as its author
  would, write the subject line of an email, reply to a Reddit post: ``curp_chain.tasks``).
  Beside each reply: how far its style features (:mod:`curp_chain.model.style`: casing,
  punctuation, laughter, contractions...) lie from each user's history (smaller is closer).

Runs offline on a CPU with the embedded default: llama.cpp, SmolLM2-135M-Instruct and the
bundled CURP checkpoint; the histories live in an in-memory SQLite store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from curp_chain import CurpChatModel
from curp_chain.model.style import style_features
from curp_chain.runtime.defaults import open_llamacpp_backend, open_store
from curp_chain.runtime.prompt import ChatTurn
from curp_chain.tasks import AeslcTask, Lamp7Task, RedditTask

HISTORIES = {
    "maya": [
        "omg just ran 18k up the hill lol legs r dead",
        "new shoes came!! testing them tmrw at 6 soooo excited",
        "cant believe its week 12 of marathon training already haha",
        "rest day = pizza and couch lol dont judge",
        "hill repeats in the rain today, im soaked but happy",
        "who wants to run the 10k with me sat?? pls say yes",
    ],
    "theo": [
        "Finally finished the 1,200-piece medieval castle puzzle. Three weeks, zero regrets.",
        "Rainy Sunday: tea, a thick fantasy novel and the cat asleep on my feet.",
        "Baked sourdough again. The crumb is getting better; the crust is still too pale.",
        "Reorganised my bookshelf by colour. It looks great, and I cannot find anything.",
        "A quiet evening with a crossword and a pot of Earl Grey. Most satisfying.",
        "I have started reading Middlemarch. The first chapter alone is a delight.",
    ],
}

TWEET = "Work was exhausting today, so I am staying in and watching a film tonight."
EMAIL = (
    "Hi all, the team dinner moves from Thursday to Friday at 7pm, same restaurant. "
    "Let me know by Wednesday if you can still make it."
)
POST = "Just finished my last exam of the semester! What are you all doing over the break?"
EVERYDAY = ("What should I cook for dinner tonight?", "Recommend one book I would enjoy.")


def as_messages(turns: Sequence[ChatTurn]) -> list[BaseMessage]:
    kinds = {"system": SystemMessage, "user": HumanMessage}
    return [kinds[turn.role](turn.content) for turn in turns]


def write_requests() -> list[tuple[str, list[BaseMessage]]]:
    """(label, messages): the three trained kinds of write request, each as its task builds
    it."""
    return [
        (f"tweet: {TWEET}", as_messages(Lamp7Task().request(TWEET))),
        (f"email subject: {EMAIL}", as_messages(AeslcTask().request(EMAIL))),
        (f"reddit reply: {POST}", as_messages(RedditTask().request(POST))),
    ]


def content_nearest(model: CurpChatModel) -> Callable[[str], str]:
    """A function naming the user whose history a reply's content is nearest."""
    encoder = model.get_personalizer().encoder
    centroids = {u: encoder.encode(h).mean(0) for u, h in HISTORIES.items()}

    def nearest(reply: str) -> str:
        vector = encoder.encode([reply])[0]
        cosines = {u: float(vector @ c / c.norm()) for u, c in centroids.items()}
        closest = max(cosines, key=cosines.__getitem__)
        shown = ", ".join(f"{u} {c:.2f}" for u, c in cosines.items())
        return f"content similarity to {shown} -> nearest {closest}"

    return nearest


def style_means() -> dict[str, np.ndarray]:
    return {u: np.mean([style_features(t) for t in h], axis=0) for u, h in HISTORIES.items()}


def style_distances(reply: str, means: dict[str, np.ndarray]) -> str:
    features = np.asarray(style_features(reply))
    gaps = {u: float(np.linalg.norm(features - mean)) for u, mean in means.items()}
    closest = min(gaps, key=gaps.__getitem__)
    shown = ", ".join(f"{u} {g:.2f}" for u, g in gaps.items())
    return f"style distance to {shown} -> closer to {closest}"


def soft_token_gap(model: CurpChatModel) -> str:
    personalizer = model.get_personalizer()
    maya, theo = (personalizer.personalize(u, TWEET).soft for u in HISTORIES)
    assert maya is not None and theo is not None
    gap = float(np.linalg.norm(maya - theo, axis=-1).mean())
    size = float(np.linalg.norm(maya, axis=-1).mean())
    return (
        f"soft tokens: {len(maya)} per request, mean norm {size:.2f}; "
        f"maya's and theo's differ by {gap:.2f} per token"
    )


def show(
    model: CurpChatModel,
    label: str,
    request: str | list[BaseMessage],
    describe: Callable[[str], str],
) -> None:
    """Each user's reply to ``request`` (and the reply to no user), each described."""
    print(label)
    for user_id in (None, *HISTORIES):
        message = model.invoke(request, user_id=user_id)
        reply = " ".join(str(message.content).split())
        print(f"  [{user_id or 'no user'}] {reply}")
        if words := message.response_metadata["curp"]["words"]:
            print(f"      words read off the codes of their items: {', '.join(words)}")
        print(f"      {describe(reply)}")
    print()


def main() -> None:
    model = CurpChatModel(
        backend=open_llamacpp_backend(None, n_threads=1),
        history_store=open_store("sqlite://"),
        max_tokens=48,
    )
    for name, history in HISTORIES.items():
        model.add_history(name, history)
    print(soft_token_gap(model) + "\n")
    print("== Everyday requests: an answer to the user (mode: assist) ==\n")
    nearest = content_nearest(model)
    for request in EVERYDAY:
        show(model, request, request, nearest)
    print("== Write as the user (mode: write, from the task's system message) ==\n")
    means = style_means()
    for label, messages in write_requests():
        show(model, label, messages, lambda reply: style_distances(reply, means))


if __name__ == "__main__":
    main()
