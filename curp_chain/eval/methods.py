"""The personalization methods compared by `curp eval`, all on the same backend and model.

Every method turns one LaMP example into a prompt (chat turns plus, for the soft-prompt
methods, soft tokens) through the one prompt builder, ``build_soft_prompt``; ``copy`` needs
no model and returns the text to paraphrase unchanged.

=================  =========================================================================
copy               the input tweet as it is: the floor every method is reported against
none               the task request alone
rag                the k history items most relevant to the input (BM25 or dense), as text
profile            as many history items as fit a token budget, as text
curp               CURP soft tokens (trait tokens + query-aware token), no history text
task               a trained task-only soft prompt of the same size (no user information)
curp-noquery       curp without the query-aware token
curp-noquant       curp on raw encoder vectors instead of their codebook reconstruction
curp-shuffled      curp with another user's history (a fixed derangement of the users)
curp-words         curp, plus words decoded from the codes of the items nearest the request
curp-words-shuffled  curp-words with another user's history (the same derangement)
=================  =========================================================================
"""

from __future__ import annotations

import hashlib
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from curp_chain.errors import CheckpointError, CurpError, MissingDependencyError
from curp_chain.eval.metrics import EVAL_INSTALL
from curp_chain.interfaces.protocols import SoftPrompt, SoftPromptBackend, SoftVectors
from curp_chain.model import item_words as words_files
from curp_chain.model.checkpoint import (
    CHECKPOINTS,
    DEFAULT_CHECKPOINT,
    check_compatible,
    load_checkpoint,
)
from curp_chain.model.encoder import SentenceEncoder
from curp_chain.model.item_words import (
    ItemWordDecoder,
    check_item_words,
    has_item_words,
    load_item_words,
    with_words,
    words_line,
)
from curp_chain.model.task_prompt import TaskPrompt, load_task_prompt
from curp_chain.model.user_model import CurpUserModel
from curp_chain.personalization.personalizer import Personalizer
from curp_chain.runtime.defaults import open_hf_backend, open_llamacpp_backend
from curp_chain.runtime.generation import NO_ECHO_NGRAM
from curp_chain.runtime.prompt import ChatTurn, build_soft_prompt
from curp_chain.tasks import Lamp7Task, Task, TaskExample

logger = logging.getLogger(__name__)

DEFAULT_TASK_CHECKPOINT = CHECKPOINTS / "smollm2-135m-mix-task"
"""The task-only baseline of :data:`~curp_chain.model.checkpoint.DEFAULT_CHECKPOINT`: a soft prompt
of the same size trained on the same examples for the same steps, with no user input."""

ASSIST_TASK_CHECKPOINT = CHECKPOINTS / "smollm2-135m-assist-task"
"""The task-only baseline of :data:`~curp_chain.model.checkpoint.ASSIST_CHECKPOINT`."""

LAMP7_TASK_CHECKPOINT = CHECKPOINTS / "smollm2-135m-task"
"""The task-only baseline of :data:`~curp_chain.model.checkpoint.LAMP7_CHECKPOINT`."""


HISTORY_HEADER = Lamp7Task.history_header
HISTORY_FOOTER = Lamp7Task.history_footer
"""LaMP-7's text-history prompts: the items as a list, then this line, then the request.
Each task has its own (:class:`~curp_chain.tasks.Task`)."""


class MethodSettings(BaseModel):
    """Everything besides the model that shapes the methods' prompts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rag_k: int = Field(default=4, ge=1)
    """History items retrieved for ``rag``."""
    retriever: Literal["bm25", "dense"] = "bm25"
    """``bm25`` over words, or ``dense``: cosine similarity of sentence-encoder vectors."""
    profile_tokens: int = Field(default=400, ge=1)
    """Token budget of the history text in ``profile``."""
    seed: int = 0
    """Chooses the derangement of users in ``curp-shuffled``."""
    checkpoint: Path = DEFAULT_CHECKPOINT
    """CURP checkpoint folder for the curp methods."""
    task_checkpoint: Path = DEFAULT_TASK_CHECKPOINT
    """Task-only soft prompt folder for ``task``."""
    model_path: Path | None = None
    """GGUF file of the LLM; SmolLM2-135M-Instruct when None."""
    threads: int | None = Field(default=None, ge=1)
    """CPU threads for llama.cpp and torch; all cores when None."""


def file_digest(path: Path) -> str:
    """A short SHA-256 of a file: cached results are only reused for the same weights."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


# --- retrieval ------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Lowercased word tokens for BM25."""
    return re.findall(r"\w+", text.lower())


def bm25_ranking(query: str, documents: Sequence[str]) -> list[int]:
    """Indices of ``documents``, most relevant to ``query`` first (Okapi BM25; ties keep
    the documents' order)."""
    if not documents:
        return []
    try:
        from rank_bm25 import BM25Okapi
    except ImportError:
        raise MissingDependencyError(f"rag needs rank-bm25; run: {EVAL_INSTALL}") from None
    tokenized = [words(d) or [""] for d in documents]  # BM25Okapi divides by the mean length
    scores = BM25Okapi(tokenized).get_scores(words(query))
    return sorted(range(len(documents)), key=lambda i: (-float(scores[i]), i))


def dense_ranking(query: str, documents: Sequence[str], encoder: SentenceEncoder) -> list[int]:
    """Indices of ``documents`` by cosine similarity of their encoder vectors to the query's."""
    if not documents:
        return []
    vectors = encoder.encode(list(documents))  # (N, D), unit length
    scores = (vectors @ encoder.encode([query])[0]).tolist()
    return sorted(range(len(documents)), key=lambda i: (-scores[i], i))


# --- shared parts ---------------------------------------------------------------------


class Resources:
    """The models the methods share, each built on first use."""

    def __init__(
        self,
        settings: MethodSettings,
        population: Sequence[TaskExample] = (),
        task: Task | None = None,
    ):
        self.settings = settings
        self.population = list(population)
        """Every example of the data set (not only the evaluated ones): donors for shuffling."""
        self.task: Task = task or Lamp7Task()
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)

    @cached_property
    def llm(self) -> SoftPromptBackend:
        """The llama.cpp backend: every method generates through it."""
        path = str(self.settings.model_path) if self.settings.model_path else None
        return open_llamacpp_backend(path, n_threads=self.settings.threads)

    @cached_property
    def scorer(self) -> Any:
        """The transformers backend on the same GGUF: it scores the gold replies."""
        path = str(self.settings.model_path) if self.settings.model_path else None
        return open_hf_backend(path, model_id=self.llm.model_id, device="cpu")

    @cached_property
    def encoder(self) -> SentenceEncoder:
        """The default sentence encoder (all-MiniLM-L6-v2), for curp and dense retrieval."""
        return SentenceEncoder()

    @cached_property
    def user_model(self) -> CurpUserModel:
        model = load_checkpoint(self.settings.checkpoint)
        check_compatible(
            model.config, llm_id=self.llm.model_id, llm_hidden_size=self.llm.hidden_size
        )
        if not model.config.trained:
            logger.warning(
                "the CURP checkpoint at %s is untrained: curp methods are not personalized",
                self.settings.checkpoint,
            )
        return model

    @cached_property
    def personalizer(self) -> Personalizer:
        check_compatible(self.user_model.config, encoder_dim=self.encoder.dim)
        return Personalizer(self.user_model, self.encoder)  # nothing is stored

    @cached_property
    def item_words(self) -> ItemWordDecoder:
        """The checkpoint's item-word decoder, checked against its codebook."""
        folder = self.settings.checkpoint
        if not has_item_words(folder):
            raise CheckpointError(
                f"{folder} has no item-word decoder; train one with curp train words --out {folder}"
            )
        decoder = load_item_words(folder)
        check_item_words(decoder, self.user_model)
        return decoder

    @cached_property
    def task_prompt(self) -> TaskPrompt:
        path = self.settings.task_checkpoint
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"no task-only soft prompt at {path}: train one (the task-prompt baseline) "
                "or pass --task-checkpoint FOLDER"
            )
        prompt = load_task_prompt(path)
        config = prompt.config
        if config.llm_hidden_size != self.llm.hidden_size or config.llm_id != self.llm.model_id:
            raise CheckpointError(
                f"{path} was made for {config.llm_id} (hidden size {config.llm_hidden_size}); "
                f"the model in use is {self.llm.model_id} ({self.llm.hidden_size})"
            )
        if not config.trained:
            logger.warning("the task prompt at %s is untrained: task is a random soft prompt", path)
        return prompt

    @cached_property
    def derangement(self) -> dict[str, TaskExample]:
        """user id -> another user's example whose history stands in for theirs (seeded, no
        fixed point)."""
        first: dict[str, TaskExample] = {}
        for example in self.population:
            first.setdefault(example.user_id, example)
        users = list(first.values())
        if len(users) < 2:
            raise CurpError("curp-shuffled needs at least two users in the data set")
        order = np.random.default_rng(self.settings.seed).permutation(len(users))
        # Each user in a random cycle takes the next one's history: no one keeps their own.
        return {
            users[order[i]].user_id: users[order[(i + 1) % len(users)]] for i in range(len(users))
        }


# --- methods ---------------------------------------------------------------------------


def request_turns(example: TaskExample) -> list[ChatTurn]:
    """The request as the soft-prompt methods were trained with it."""
    return list(example.messages)


def text_turns(
    example: TaskExample, history: Sequence[str] = (), task: Task | None = None
) -> list[ChatTurn]:
    """The request of the text-prompt methods: the shared request, with the history items
    listed before the user's turn when there are any (under the task's header and footer)."""
    turns = request_turns(example)
    if not history:
        return turns
    task = task or Lamp7Task()
    items = "\n".join("- " + " ".join(text.split()) for text in history)
    content = f"{task.history_header}\n{items}\n\n{task.history_footer}\n{example.input}"
    return [*turns[:-1], ChatTurn("user", content)]


class Method(ABC):
    """One way of personalizing the reply to a LaMP request."""

    name: ClassVar[str]
    uses_llm: ClassVar[bool] = True

    def __init__(self, resources: Resources):
        self.resources = resources

    @property
    def settings(self) -> MethodSettings:
        return self.resources.settings

    def prepare(self) -> None:
        """Load what the method needs now, so a missing part fails before the run starts."""
        if self.uses_llm:
            _ = self.resources.llm

    def fingerprint(self) -> dict[str, Any]:
        """What, besides the example, determines this method's output (for the cache)."""
        return {"method": self.name}

    def soft_prompt(self, turns: Sequence[ChatTurn], soft: SoftVectors | None) -> SoftPrompt:
        llm = self.resources.llm
        return build_soft_prompt(llm.chat_template, turns, soft, llm.special_tokens)

    @abstractmethod
    def prompt(self, example: TaskExample) -> SoftPrompt | None:
        """The prompt for ``example``; None when the method uses no model."""

    def base_prompt(self, example: TaskExample) -> SoftPrompt | None:
        """The same prompt without the user's information: the difference in tokens is what
        the method spends on the user."""
        return self.soft_prompt(self.text_turns(example), None) if self.uses_llm else None

    def no_echo(self, example: TaskExample) -> tuple[str, ...]:
        """Passages of ``example``'s prompt the reply must not echo
        (GenerationParams.no_echo)."""
        return ()

    def text_turns(self, example: TaskExample, history: Sequence[str] = ()) -> list[ChatTurn]:
        return text_turns(example, history, self.resources.task)


class CopyMethod(Method):
    name = "copy"
    uses_llm = False

    def prepare(self) -> None:
        task = self.resources.task
        if not task.copy_applies:
            raise CurpError(
                f"copy does not apply to {task.name}: its request is not a rewrite of a text "
                "the reply could copy; leave copy out of --methods"
            )

    def prompt(self, example: TaskExample) -> SoftPrompt | None:
        return None


class NoneMethod(Method):
    name = "none"

    def prompt(self, example: TaskExample) -> SoftPrompt | None:
        return self.soft_prompt(self.text_turns(example), None)


class RagMethod(Method):
    name = "rag"

    def prepare(self) -> None:
        super().prepare()
        if self.settings.retriever == "dense":
            _ = self.resources.encoder.dim
        else:
            bm25_ranking("probe", ["probe"])  # fails now if rank-bm25 is missing

    def fingerprint(self) -> dict[str, Any]:
        return {"method": self.name, "k": self.settings.rag_k, "retriever": self.settings.retriever}

    def retrieve(self, example: TaskExample) -> list[str]:
        texts = example.profile_texts
        if self.settings.retriever == "dense":
            ranking = dense_ranking(example.source, texts, self.resources.encoder)
        else:
            ranking = bm25_ranking(example.source, texts)
        return [texts[i] for i in ranking[: self.settings.rag_k]]

    def prompt(self, example: TaskExample) -> SoftPrompt | None:
        return self.soft_prompt(self.text_turns(example, self.retrieve(example)), None)


class ProfileMethod(Method):
    name = "profile"

    def fingerprint(self) -> dict[str, Any]:
        return {"method": self.name, "profile_tokens": self.settings.profile_tokens}

    def select(self, example: TaskExample) -> list[str]:
        """Profile items in order, each kept if it still fits the budget (counted as the
        list lines they become)."""
        budget, chosen = self.settings.profile_tokens, []
        for text in example.profile_texts:
            cost = self.resources.llm.count_tokens("- " + " ".join(text.split()) + "\n")
            if cost <= budget:
                chosen.append(text)
                budget -= cost
        return chosen

    def prompt(self, example: TaskExample) -> SoftPrompt | None:
        return self.soft_prompt(self.text_turns(example, self.select(example)), None)


class CurpMethod(Method):
    """Soft tokens from the user's quantized history spliced before the request."""

    name = "curp"
    use_query_token: ClassVar[bool] = True

    def __init__(self, resources: Resources):
        super().__init__(resources)
        self._codes: dict[str, np.ndarray] = {}

    def prepare(self) -> None:
        super().prepare()
        _ = self.resources.personalizer

    def fingerprint(self) -> dict[str, Any]:
        path = self.settings.checkpoint
        return {"method": self.name, "checkpoint": file_digest(path / "model.safetensors")}

    def history(self, example: TaskExample) -> list[str]:
        """The items the soft tokens are made from: the first max_history_items."""
        limit = self.resources.user_model.config.max_history_items
        return example.profile_texts[:limit]

    def codes(self, example: TaskExample) -> np.ndarray:
        if example.fingerprint() not in self._codes:
            self._codes[example.fingerprint()] = self.resources.personalizer.encode_codes(
                self.history(example)
            )
        return self._codes[example.fingerprint()]

    def soft(self, owner: TaskExample, query: str) -> SoftVectors:
        return self.resources.personalizer.soft_tokens_from_codes(
            self.codes(owner).tolist(), query, use_query_token=self.use_query_token
        )

    def base_prompt(self, example: TaskExample) -> SoftPrompt | None:
        return self.soft_prompt(request_turns(example), None)

    def owner(self, example: TaskExample) -> TaskExample:
        """Whose history personalizes ``example``."""
        return example

    def prompt(self, example: TaskExample) -> SoftPrompt | None:
        turns = request_turns(example)
        owner = self.owner(example)
        if not owner.profile:  # like serving: no history, no personalization
            return self.soft_prompt(turns, None)
        return self.soft_prompt(turns, self.soft(owner, turns[-1].content))


class CurpNoQueryMethod(CurpMethod):
    name = "curp-noquery"
    use_query_token = False

    def prepare(self) -> None:
        super().prepare()
        config = self.resources.user_model.config
        if config.num_trait_tokens == 0:
            raise CurpError(
                "curp-noquery needs trait tokens; this checkpoint has num_trait_tokens=0"
            )


class CurpNoQuantMethod(CurpMethod):
    """Raw encoder vectors through the same aggregator and projector (no codebook)."""

    name = "curp-noquant"

    @torch.no_grad()
    def soft(self, owner: TaskExample, query: str) -> SoftVectors:
        model = self.resources.user_model
        item_vectors = self.resources.personalizer.item_vectors  # encoder vector + style
        vectors = item_vectors(self.history(owner))[None]  # (1, N, D)
        mask = torch.ones(vectors.shape[:2], dtype=torch.bool)
        query_vector = item_vectors([query]) if model.config.query_aware else None
        soft = model.soft_tokens(vectors, mask, query_vector)
        return soft[0].float().numpy()


class CurpShuffledMethod(CurpMethod):
    """Another user's history with this user's request: must score below ``curp``."""

    name = "curp-shuffled"

    def fingerprint(self) -> dict[str, Any]:
        users = hashlib.sha256(" ".join(u.id for u in self.resources.population).encode())
        seed = self.settings.seed
        return {**super().fingerprint(), "seed": seed, "users": users.hexdigest()[:16]}

    def prepare(self) -> None:
        super().prepare()
        _ = self.resources.derangement

    def owner(self, example: TaskExample) -> TaskExample:
        return self.resources.derangement.get(example.user_id, example)


class CurpWordsMethod(CurpMethod):
    """curp's soft tokens, and before the request the words the item-word decoder reads off
    the codes of the user's items nearest it (curp_chain.model.item_words)."""

    name = "curp-words"

    def __init__(self, resources: Resources):
        super().__init__(resources)
        self._item_codes: dict[str, np.ndarray] = {}  # up to max_items, beyond curp's
        self._words: dict[tuple[str, str], list[str]] = {}

    def prepare(self) -> None:
        super().prepare()
        _ = self.resources.item_words

    def fingerprint(self) -> dict[str, Any]:
        words = file_digest(self.settings.checkpoint / words_files.WEIGHTS_FILE)
        line = with_words("{request}", ["{word}"])  # how the words stand in the prompt
        return {
            **super().fingerprint(),
            "item_words": words,
            "line": line,
            "no_echo": NO_ECHO_NGRAM,
        }

    def words(self, owner: TaskExample, query: str) -> list[str]:
        """The words for ``query`` from ``owner``'s newest items (encoded once per owner)."""
        key = (owner.fingerprint(), query)
        if key not in self._words:
            if owner.fingerprint() not in self._item_codes:
                limit = self.resources.item_words.config.max_items
                self._item_codes[owner.fingerprint()] = self.resources.personalizer.encode_codes(
                    owner.profile_texts[:limit]
                )
            codes = self._item_codes[owner.fingerprint()].tolist()
            self._words[key] = self.resources.personalizer.words_from_codes(
                self.resources.item_words, codes, query
            )
        return self._words[key]

    def no_echo(self, example: TaskExample) -> tuple[str, ...]:
        owner = self.owner(example)
        if not owner.profile:
            return ()
        return (words_line(self.words(owner, request_turns(example)[-1].content)),)

    def prompt(self, example: TaskExample) -> SoftPrompt | None:
        turns = request_turns(example)
        owner = self.owner(example)
        if not owner.profile:
            return self.soft_prompt(turns, None)
        request = turns[-1].content
        told = with_words(request, self.words(owner, request))
        return self.soft_prompt([*turns[:-1], ChatTurn("user", told)], self.soft(owner, request))


class CurpWordsShuffledMethod(CurpWordsMethod, CurpShuffledMethod):
    """curp-words with another user's history: must score below ``curp-words``."""

    name = "curp-words-shuffled"


class TaskMethod(Method):
    name = "task"

    def prepare(self) -> None:
        super().prepare()
        _ = self.resources.task_prompt

    def fingerprint(self) -> dict[str, Any]:
        path = self.settings.task_checkpoint
        return {"method": self.name, "checkpoint": file_digest(path / "model.safetensors")}

    def base_prompt(self, example: TaskExample) -> SoftPrompt | None:
        return self.soft_prompt(request_turns(example), None)

    def prompt(self, example: TaskExample) -> SoftPrompt | None:
        with torch.no_grad():
            soft = self.resources.task_prompt().detach().float().numpy()
        return self.soft_prompt(request_turns(example), soft)


METHODS: dict[str, Callable[[Resources], Method]] = {
    cls.name: cls
    for cls in (
        CopyMethod,
        NoneMethod,
        RagMethod,
        ProfileMethod,
        CurpMethod,
        TaskMethod,
        CurpNoQueryMethod,
        CurpNoQuantMethod,
        CurpShuffledMethod,
        CurpWordsMethod,
        CurpWordsShuffledMethod,
    )
}
"""Every method by name, in the order tables list them."""


def parse_methods(spec: str | Sequence[str]) -> list[str]:
    """Method names from "none,rag,curp" (or a list), checked, duplicates dropped."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise CurpError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if not names:
        raise CurpError(f"no method given; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(names))
