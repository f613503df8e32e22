"""Email subject lines (AESLC): write the subject this Enron sender gave an email.

Layout (``aeslc/train.jsonl``, ``aeslc/dev.jsonl``): one sender per line, ``{"user_id",
"emails": [{"id", "body", "subject", "annotations"?}]}``. The request quotes the body, cut to
:data:`~curp_chain.tasks.base.MAX_SOURCE_CHARS` characters; the target is the sender's own
subject (annotators' subjects are not used). The sender's history is the subjects of their
other emails: what a user writes in this task, and short enough that style shows; the
target email's own subject is left out.
"""

from __future__ import annotations

from pathlib import Path

from curp_chain.data.generic import ExampleRecord, Histories, ItemRecord
from curp_chain.data.jsonl import read_jsonl
from curp_chain.tasks.base import Task, TaskDataError, example_record, field


class AeslcTask(Task):
    name = "aeslc"
    description = "Enron emails: the subject line the sender wrote"
    system = "You write email subject lines. Reply with the subject line only, nothing else."
    instruction = "Write the subject line of this email:\n\n"
    reply_label = r"(?:email )?subject(?: line)?"
    history_header = "Subject lines of earlier emails by this user:"
    history_footer = "Write the subject line in the same style as this user's subject lines."
    eval_per_user = 5
    """AESLC's dev split has 10 senders: five emails each make 50 examples."""

    def records(self, data_dir: str | Path, split: str) -> tuple[list[ExampleRecord], Histories]:
        self.check_split(split)
        path = self.folder(data_dir) / f"{split}.jsonl"
        examples: list[ExampleRecord] = []
        histories: Histories = {}
        for number, row in read_jsonl(path):
            where = f"{path}:{number}"
            user = f"aeslc:{field(row, 'user_id', str, where)}"
            items = []
            for email in field(row, "emails", list, where):
                if not isinstance(email, dict) or not all(
                    isinstance(email.get(k), str) for k in ("id", "body", "subject")
                ):
                    raise TaskDataError(f"{where}: every email needs 'id', 'body' and 'subject'")
                if not email["subject"].strip() or not email["body"].strip():
                    continue
                items.append(ItemRecord(text=email["subject"], id=email["id"], kind="subject"))
                examples.append(
                    example_record(self, user, email["body"], email["subject"], item_id=email["id"])
                )
            histories[user] = items
        return examples, histories
