"""Tool calls that wait for the user's yes: what the pause shows, what the answer may say, what it does.

A model step whose calls include tools with the ``approve`` policy pauses (a LangGraph interrupt, saved in the
checkpoint, so it survives a restart and is answered from any replica) before any of that step's calls run. All
the step's calls awaiting approval are shown together; the answer gives a decision for each (approve, approve
with edited arguments, reject with a reason), or one for all. A plain message sent instead rejects them all,
with the message as the reason, as if the user had said "no, rather...".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import jsonschema
from langchain_core.messages import ToolCall
from pydantic import BaseModel

from server.errors import InvalidFieldError
from server.tools.catalog import ToolCatalog

APPROVAL_KIND = "approval"
Decision = Literal["approve", "edit", "reject"]
# What each decision is recorded and counted as.
DECISION_RECORDS: dict[str, str] = {"approve": "approved", "edit": "edited", "reject": "rejected"}


@dataclass(frozen=True)
class CallDecision:
    decision: Decision
    arguments: dict[str, Any] | None = None  # edit: what the call runs with instead
    reason: str | None = None  # reject: what the model is told

    def as_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "arguments": self.arguments, "reason": self.reason}


def approval_request(calls: list[ToolCall], catalog: ToolCatalog) -> dict[str, Any]:
    """What the pause shows (the interrupt's value, and the approval event's): each call's tool, server and
    arguments."""
    described = []
    for call in calls:
        entry = catalog.entry(call["name"])
        described.append(
            {
                "id": call.get("id") or "",
                "tool": call["name"],
                "server": entry.server if entry is not None else None,
                "arguments": call["args"],
                "description": (entry.tool.description if entry is not None else "")[:500],
            }
        )
    return {"type": APPROVAL_KIND, "calls": described}


def is_approval(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") == APPROVAL_KIND


def decisions_of(answer: Any, calls: list[ToolCall]) -> dict[str, CallDecision]:
    """The decision for each call from the resume value: the approval API's decisions by call id, or a message
    the user sent instead (every call rejected, with the message as the reason)."""
    if isinstance(answer, dict) and isinstance(answer.get("decisions"), dict):
        given = answer["decisions"]
        decided = {}
        for call in calls:
            item = given.get(call.get("id") or "") or {"decision": "reject", "reason": "no decision was given"}
            decided[call.get("id") or ""] = CallDecision(item["decision"], item.get("arguments"), item.get("reason"))
        return decided
    reason = f"the user answered instead: {answer}" if isinstance(answer, str) and answer else None
    return {call.get("id") or "": CallDecision("reject", reason=reason) for call in calls}


def rejection_text(decision: CallDecision) -> str:
    """What the model reads for a call the user rejected."""
    return "the user rejected this call" + (f": {decision.reason}" if decision.reason else "")


def resolve_decisions(
    pending: list[dict[str, Any]],
    *,
    decision: Decision | None,
    reason: str | None,
    decisions: list[dict[str, Any]],
    catalog: ToolCatalog,
) -> dict[str, CallDecision]:
    """The API's answer checked against the calls that wait: a decision for each (its own, else the one for all),
    edited arguments that the tool's schema accepts. 422 naming the field otherwise."""
    by_id = {call["id"]: call for call in pending}
    resolved: dict[str, CallDecision] = {}
    for index, item in enumerate(decisions):
        field = f"decisions[{index}]"
        call = by_id.get(item["id"])
        if call is None:
            raise InvalidFieldError(
                f"{field}.id", f"no call {item['id']!r} awaits approval (awaiting: {sorted(by_id)})"
            )
        if item["id"] in resolved:
            raise InvalidFieldError(f"{field}.id", f"call {item['id']!r} has two decisions")
        arguments = item.get("arguments")
        if item["decision"] == "edit":
            if arguments is None:
                raise InvalidFieldError(f"{field}.arguments", "an edit gives the arguments to run the call with")
            _check_arguments(catalog, call["tool"], arguments, f"{field}.arguments")
        elif arguments is not None:
            raise InvalidFieldError(f"{field}.arguments", "arguments go with the edit decision only")
        resolved[item["id"]] = CallDecision(item["decision"], arguments, item.get("reason"))
    for call_id in by_id:
        if call_id not in resolved:
            if decision is None:
                raise InvalidFieldError(
                    "decisions", f"call {call_id!r} has no decision (give one per call, or decision for all)"
                )
            resolved[call_id] = CallDecision(decision, None, reason)
    return resolved


def _check_arguments(catalog: ToolCatalog, tool_name: str, arguments: dict[str, Any], field: str) -> None:
    entry = catalog.entry(tool_name)
    if entry is None:
        return  # its server is down: the call will say so when it runs
    schema = entry.tool.args_schema
    if isinstance(schema, dict):  # an MCP tool's, as its server declared it
        json_schema = schema
    elif isinstance(schema, type) and issubclass(schema, BaseModel):
        json_schema = schema.model_json_schema()
    else:
        return
    try:
        jsonschema.validate(arguments, json_schema)
    except jsonschema.ValidationError as error:
        where = ".".join(str(part) for part in error.absolute_path)
        raise InvalidFieldError(
            f"{field}.{where}" if where else field, f"not accepted by {tool_name}: {error.message}"
        ) from None
    except jsonschema.SchemaError:
        return  # the server's schema itself is broken: the tool decides


def summary_of(pending: list[dict[str, Any]], resolved: dict[str, CallDecision]) -> str:
    """The run's input as the user's answer reads in the runs list: "approve calculator; reject web_search"."""
    return "; ".join(f"{resolved[call['id']].decision} {call['tool']}" for call in pending)
