"""Two users with clearly different histories send the same requests; beside each reply, a
measured effect of their soft tokens.

maya texts in lowercase, with "lol" and no apostrophes; theo writes formal, punctuated prose.
Both ask the bundled checkpoint for what it was trained on (rewrite a tweet as its author
would, LaMP-7's task, with the system message it was trained with), then one everyday
request. For every reply the script prints how far its style features
(:mod:`curp_chain.style`: casing, punctuation, laughter, contractions...) lie from each
user's history (the distance of the reply's feature vector to the mean of the user's items;
smaller is closer), next to the same for a reply with no user, and how far apart the two
users' soft tokens are.

Runs offline on a CPU with the embedded default: llama.cpp, SmolLM2-135M-Instruct and the
bundled CURP checkpoint; the histories live in an in-memory SQLite store.
"""

from __future__ import annotations

import numpy as np
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from curp_chain import CurpChatModel
from curp_chain.defaults import open_llamacpp_backend, open_store
from curp_chain.style import style_features
from curp_chain.tasks import PARAPHRASE_SYSTEM

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

INSTRUCTION = "Paraphrase the following tweet without any explanation before or after it: "
TWEETS = [
    "I am going to the beach with my friends this weekend and I cannot wait.",
    "Work was exhausting today, so I am staying in and watching a film tonight.",
]
EVERYDAY = "Plans for the weekend?"


def requests() -> list[tuple[str, list[BaseMessage]]]:
    """(label, messages): the trained task with its system message, then an everyday request
    (CurpChatModel's default system message)."""
    task = [
        (f"tweet: {tweet}", [SystemMessage(PARAPHRASE_SYSTEM), HumanMessage(INSTRUCTION + tweet)])
        for tweet in TWEETS
    ]
    return [*task, (f"chat: {EVERYDAY}", [HumanMessage(EVERYDAY)])]


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
    maya, theo = (personalizer.personalize(u, INSTRUCTION + TWEETS[0]).soft for u in HISTORIES)
    assert maya is not None and theo is not None
    gap = float(np.linalg.norm(maya - theo, axis=-1).mean())
    size = float(np.linalg.norm(maya, axis=-1).mean())
    return (
        f"soft tokens: {len(maya)} per request, mean norm {size:.2f}; "
        f"maya's and theo's differ by {gap:.2f} per token"
    )


def main() -> None:
    model = CurpChatModel(
        backend=open_llamacpp_backend(None, n_threads=1),
        history_store=open_store("sqlite://"),
        max_tokens=40,
    )
    for user_id, history in HISTORIES.items():
        model.add_history(user_id, history)
    print(soft_token_gap(model) + "\n")
    means = style_means()
    for label, messages in requests():
        print(label)
        for user_id in (None, *HISTORIES):
            reply = " ".join(str(model.invoke(messages, user_id=user_id).content).split())
            print(f"  [{user_id or 'no user'}] {reply}")
            print(f"      {style_distances(reply, means)}")
        print()


if __name__ == "__main__":
    main()
