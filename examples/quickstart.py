"""Two users with different histories ask the same question and get different replies.

Runs offline on a CPU with the embedded default: a SQLite store in $CURP_HOME (or the user
data directory), llama.cpp, SmolLM2-135M-Instruct and the bundled CURP checkpoint.
"""

from curp_chain import CurpChatModel

HISTORIES = {
    "maya": [
        "Sunrise trail run done: 18 km, 900 m of climbing, legs on fire. Worth it!",
        "New carbon race shoes arrived. Testing them on hill repeats tomorrow at 6am.",
        "Marathon training week 12: long run 32 km at 5:10/km. Recovery smoothie time.",
        "Nothing beats a cold lake swim after a hot mountain ultra.",
        "Race day checklist: gels, salt tabs, headlamp, and a good playlist.",
    ],
    "theo": [
        "Finally finished the 1,200-piece medieval castle puzzle. Three weeks, zero regrets.",
        "Rainy Sunday: tea, a thick fantasy novel and the cat asleep on my feet.",
        "Baked sourdough again. The crumb is getting better, the crust still too pale.",
        "Board game night! Won Catan twice, lost Ticket to Ride badly.",
        "Reorganised my bookshelf by colour. It looks great and I can't find anything.",
    ],
}

QUESTION = "Suggest a plan for my Saturday, in two sentences."


def main() -> None:
    model = CurpChatModel(max_tokens=60)
    for user_id, history in HISTORIES.items():
        model.forget_user(user_id)  # start the demo from a clean slate each run
        model.add_history(user_id, history)

    config = model.get_personalizer().user_model.config
    if not config.trained:
        print("note: the bundled CURP checkpoint is an untrained initialisation.\n")
    print(f"Question: {QUESTION}\n")
    for user_id in HISTORIES:
        reply = model.invoke(QUESTION, user_id=user_id)
        curp = reply.response_metadata["curp"]
        print(
            f"[{user_id}] ({curp['history_items']} history items, "
            f"{curp['soft_tokens']} soft tokens)"
        )
        print(f"{reply.content}\n")


if __name__ == "__main__":
    main()
