"""Answers to mem0's own prompts, so the memory path can run end to end against the simulator.

mem0 2.2's ``Memory.add`` makes one call: the additive-extraction prompt (system ``ADDITIVE_EXTRACTION_PROMPT``,
user ``generate_additive_extraction_prompt(...)`` with a ``## New Messages`` section) and parses
``{"memory": [{"id", "text", "attributed_to"}]}``. Older mem0 pipelines (still shipped as prompts) ask for
``{"facts": [...]}`` (FACT_RETRIEVAL / USER_MEMORY_EXTRACTION / AGENT_MEMORY_EXTRACTION, user ``"Input:\\n..."``)
and then ``{"memory": [{"id", "text", "event"}]}`` from the update-memory prompt. All three are recognised by
their text, and the "facts" are always the speaker's own declarative sentences, verbatim.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

_ROLE_LINE = re.compile(r"^(user|assistant|system): ?", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_FENCED = re.compile(r"```[a-z]*\s*\n(.*?)\n\s*```", re.DOTALL)
# A sentence made only of these words carries no fact ("Hi.", "Thanks!", "OK, great.").
_SMALL_TALK_WORDS = (
    "hi hello hey thanks thank you ok okay yes no sure bye goodbye good morning evening afternoon night great "
    "cool nice there please welcome awesome perfect fine hmm well"
)
_SMALL_TALK = frozenset(_SMALL_TALK_WORDS.split())

ADDITIVE_MARKERS = ("## New Messages\n", "## Existing Memories\n")
UPDATE_MARKER = "The new retrieved facts are mentioned in the triple backticks"
OLD_MEMORY_MARKER = "Below is the current content of my memory"
AGENT_EXTRACTION_MARKER = "Assistant Information Organizer"


def memory_answer(system_text: str, last_user_text: str) -> dict[str, Any] | None:
    """The JSON mem0 expects when this is one of its memory requests, else None."""
    if UPDATE_MARKER in last_user_text:
        return _update_memory_answer(last_user_text)
    if all(marker in last_user_text for marker in ADDITIVE_MARKERS):
        return _additive_extraction_answer(last_user_text)
    if '"facts"' in system_text and last_user_text.startswith("Input:"):
        speaker = "assistant" if AGENT_EXTRACTION_MARKER in system_text else "user"
        return {"facts": declarative_sentences(_lines_of(last_user_text.removeprefix("Input:"), speaker))}
    return None


def declarative_sentences(texts: list[str]) -> list[str]:
    """Every sentence of ``texts`` that states something: not a question, not small talk. Verbatim, in order."""
    facts = []
    for text in texts:
        for line in text.splitlines():
            for sentence in _SENTENCE_END.split(line.strip()):
                sentence = sentence.strip()
                if not sentence or sentence.endswith("?"):
                    continue
                words = {word.strip(".,!;:'\"()").lower() for word in sentence.split()}
                if words <= _SMALL_TALK:
                    continue
                facts.append(sentence)
    return facts


def _lines_of(conversation: str, speaker: str) -> list[str]:
    """The messages of ``speaker`` in mem0's "role: content" transcript (a message may span several lines)."""
    starts = list(_ROLE_LINE.finditer(conversation))
    if not starts:
        return [conversation] if speaker == "user" else []
    spoken = []
    for index, start in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(conversation)
        if start.group(1) == speaker:
            spoken.append(conversation[start.end() : end])
    return spoken


def _section(text: str, header: str) -> str:
    start = text.find(header)
    if start < 0:
        return ""
    start += len(header)
    end = text.find("\n\n## ", start)
    return text[start : end if end >= 0 else len(text)]


def _additive_extraction_answer(prompt: str) -> dict[str, Any]:
    new_messages = _section(prompt, "## New Messages\n")
    stripped = new_messages.strip()
    if stripped.startswith("["):  # mem0 JSON-encodes new messages given as a list rather than a transcript
        try:
            user_texts = [
                str(message.get("content", ""))
                for message in json.loads(stripped)
                if isinstance(message, dict) and message.get("role") == "user"
            ]
        except ValueError:
            user_texts = _lines_of(new_messages, "user")
    else:
        user_texts = _lines_of(new_messages, "user")
    existing = {str(memory.get("text")) for memory in _listed(_section(prompt, "## Existing Memories\n"))}
    facts = [fact for fact in dict.fromkeys(declarative_sentences(user_texts)) if fact not in existing]
    return {"memory": [{"id": str(index), "text": fact, "attributed_to": "user"} for index, fact in enumerate(facts)]}


def _update_memory_answer(prompt: str) -> dict[str, Any]:
    """Keep every old memory (NONE) and ADD each retrieved fact that is not already one of them."""
    old_memories: list[dict[str, Any]] = []
    if OLD_MEMORY_MARKER in prompt:
        blocks = _FENCED.findall(prompt.split(OLD_MEMORY_MARKER, 1)[1])
        old_memories = _listed(blocks[0]) if blocks else []
    blocks = _FENCED.findall(prompt.split(UPDATE_MARKER, 1)[1])
    facts = _parse_literal(blocks[0]) if blocks else []
    if isinstance(facts, dict):
        facts = facts.get("facts", [])
    memory = [{"id": str(old.get("id")), "text": str(old.get("text", "")), "event": "NONE"} for old in old_memories]
    known = {entry["text"] for entry in memory}
    next_id = 1 + max((int(entry["id"]) for entry in memory if entry["id"].isdigit()), default=-1)
    for fact in facts:
        if isinstance(fact, str) and fact not in known:
            known.add(fact)
            memory.append({"id": str(next_id), "text": fact, "event": "ADD"})
            next_id += 1
    return {"memory": memory}


def _listed(text: str) -> list[dict[str, Any]]:
    """The objects of a list literal (mem0's memories)."""
    parsed = _parse_literal(text)
    return [item for item in parsed if isinstance(item, dict)] if isinstance(parsed, list) else []


def _parse_literal(text: str) -> Any:
    """JSON, or the Python repr mem0 formats some values with; empty list when it is neither."""
    text = text.strip()
    if not text:
        return []
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return []
