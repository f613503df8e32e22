"""Two users with different histories send the same requests; each reply is conditioned on
that user's own soft tokens.

Runs offline on a CPU with the embedded default: a SQLite store in $CURP_HOME (or the user
data directory), llama.cpp, SmolLM2-135M-Instruct and the bundled CURP checkpoint. The
bundled checkpoint was trained for LaMP-7's task (rewrite a tweet as its author would), so
the requests are of that kind. Its personalization is measurable but small (README,
"Results"): the two users' soft tokens differ, and their replies may still coincide.
"""

import numpy as np

from curp_chain import CurpChatModel

HISTORIES = {
    "maya": [
        "omg just ran 18k up the hill lol legs r dead",
        "new shoes came!! testing them tmrw at 6 soooo excited",
        "cant believe its week 12 of marathon training already haha",
        "cold lake swim after the ultra... best feeling ever",
        "gels, salt tabs, headlamp, playlist... race day lol",
    ],
    "theo": [
        "Finally finished the 1,200-piece medieval castle puzzle. Three weeks, zero regrets.",
        "Rainy Sunday: tea, a thick fantasy novel and the cat asleep on my feet.",
        "Baked sourdough again. The crumb is getting better; the crust is still too pale.",
        "Board game night. Won Catan twice, lost Ticket to Ride badly.",
        "Reorganised my bookshelf by colour. It looks great, and I cannot find anything.",
    ],
}

INSTRUCTION = "Paraphrase the following tweet without any explanation before or after it: "
REQUESTS = [
    INSTRUCTION + "I am going to the beach with my friends this weekend and I cannot wait.",
    INSTRUCTION + "Work was exhausting today, so I am staying in and watching a film tonight.",
]


def main() -> None:
    model = CurpChatModel(max_tokens=60)
    for user_id, history in HISTORIES.items():
        model.forget_user(user_id)  # start the demo from a clean slate each run
        model.add_history(user_id, history)

    personalizer = model.get_personalizer()
    if not personalizer.user_model.config.trained:
        print("note: the bundled CURP checkpoint is an untrained initialisation.\n")
    soft = [personalizer.personalize(u, REQUESTS[0]).soft for u in HISTORIES]
    if soft[0] is not None and soft[1] is not None:
        gap = float(np.linalg.norm(soft[0] - soft[1], axis=-1).mean())
        size = float(np.linalg.norm(soft[0], axis=-1).mean())
        print(f"soft tokens: mean norm {size:.2f}; maya and theo differ by {gap:.2f} per token\n")
    for request in REQUESTS:
        print(f"Request: {request.removeprefix(INSTRUCTION)}")
        for user_id in HISTORIES:
            reply = model.invoke(request, user_id=user_id)
            curp = reply.response_metadata["curp"]
            print(f"  [{user_id}] ({curp['soft_tokens']} soft tokens) {reply.content}")
        print()


if __name__ == "__main__":
    main()
