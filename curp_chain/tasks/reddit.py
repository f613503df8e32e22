"""Reddit replies: write the comment this author wrote in answer to a post or comment.

Layout (``reddit/train.jsonl``, ``reddit/dev.jsonl``): one author per line, ``{"user_id",
"items": [{"id", "kind", "subreddit", "created", "text"}], "pairs": [{"id", "parent",
"reply"}]}``, items oldest first. A pair's ``id`` is its reply's item id, so the reply is
left out of the history when it is the target. Parents are cut to
:data:`~curp_chain.tasks.base.MAX_SOURCE_CHARS` characters.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from curp_chain.data.generic import ExampleRecord, Histories, ItemRecord
from curp_chain.data.jsonl import read_jsonl
from curp_chain.tasks.base import Task, TaskDataError, example_record, field


class RedditTask(Task):
    name = "reddit"
    description = "Reddit college subreddits: the author's reply to a post or comment"
    system = "You write Reddit comments. Reply with the comment only, nothing before or after it."
    instruction = "Write a reply to this Reddit post:\n\n"
    whole_reply = True
    history_header = "Earlier posts and comments written by this user:"
    history_footer = "Write the reply in the same style as this user's posts and comments."

    def records(self, data_dir: str | Path, split: str) -> tuple[list[ExampleRecord], Histories]:
        self.check_split(split)
        path = self.folder(data_dir) / f"{split}.jsonl"
        examples: list[ExampleRecord] = []
        histories: Histories = {}
        for number, row in read_jsonl(path):
            where = f"{path}:{number}"
            user = f"reddit:{field(row, 'user_id', str, where)}"
            items = []
            for item in field(row, "items", list, where):
                if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                    raise TaskDataError(f"{where}: every item needs a 'text' string")
                created = item.get("created")
                items.append(
                    ItemRecord(
                        text=item["text"],
                        id=str(item.get("id")),
                        kind=item.get("kind"),
                        created_at=datetime.fromtimestamp(created, UTC)
                        if isinstance(created, int | float)
                        else None,
                        metadata={"subreddit": item["subreddit"]}
                        if item.get("subreddit")
                        else None,
                    )
                )
            histories[user] = items
            for pair in field(row, "pairs", list, where):
                if not isinstance(pair, dict) or not all(
                    isinstance(pair.get(k), str) for k in ("parent", "reply")
                ):
                    raise TaskDataError(f"{where}: every pair needs 'parent' and 'reply' strings")
                examples.append(
                    example_record(
                        self, user, pair["parent"], pair["reply"], item_id=str(pair.get("id"))
                    )
                )
        return examples, histories
