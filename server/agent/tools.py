"""The agent's built-in tools (server.tools runs them, with those of MCP servers).

A tool that fails answers with a short "<tool> failed: ..." text instead of raising: the model reads it and
can try something else, and the turn goes on. The one exception that leaves a tool on purpose is LangGraph's
interrupt, raised by ``ask_human`` to pause the graph until the user answers.
"""

from __future__ import annotations

import ast
import asyncio
import math
import operator
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from ddgs import DDGS
from ddgs.exceptions import RatelimitException
from langchain_core.tools import BaseTool, tool
from langgraph.types import interrupt
from loguru import logger

from agentctl.config import AgentSettings
from server.tools.catalog import INTERRUPTS_METADATA_KEY
from server.tools.runner import describe_error

SNIPPET_MAX_CHARS = 300


def build_tools(settings: AgentSettings) -> list[BaseTool]:
    """The tools offered to the model, configured by ``settings``."""

    @tool
    async def web_search(query: str) -> str:
        """Search the web (DuckDuckGo). Returns numbered results: title, URL and a snippet of each page."""
        return await search_the_web(
            query,
            timeout_seconds=settings.web_search_timeout_seconds,
            max_results=settings.web_search_max_results,
        )

    @tool
    async def current_datetime(timezone: str | None = None) -> str:
        """The current date, time and weekday. `timezone` is an IANA name such as Europe/Paris; default UTC."""
        return await describe_now(timezone)

    @tool
    async def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression exactly, e.g. `2**10 / 3` or `sqrt(2) * sin(pi / 4)`.

        Numbers, + - * / // % **, parentheses, and sqrt, sin, cos, tan, log, log10, exp, floor, ceil, abs,
        round, pi, e.
        """
        return calculate(expression)

    @tool
    async def ask_human(question: str) -> str:
        """Ask the user a question and wait for the answer. Use it only when you cannot go on without them."""
        return ask_the_user(question)

    ask_human.metadata = {INTERRUPTS_METADATA_KEY: True}
    return [web_search, current_datetime, calculator, ask_human]


async def search_the_web(query: str, *, timeout_seconds: float, max_results: int) -> str:
    """Numbered DuckDuckGo results, or "web_search failed: ..." (never raises: the model reads the reason)."""
    try:
        async with asyncio.timeout(timeout_seconds):
            results = await asyncio.to_thread(_search_duckduckgo, query, timeout_seconds, max_results)
    except TimeoutError:
        return f"web_search failed: no answer within {timeout_seconds:g} s"
    except RatelimitException:
        return "web_search failed: the search engine is rate limiting us; try again later"
    except Exception as error:
        logger.info("web search failed: {}", describe_error(error))
        return f"web_search failed: {describe_error(error)}"
    if not results:
        return f"web_search: no results for {query!r}"
    return "\n".join(
        f"{number}. {_one_line(result.get('title', ''))} — {result.get('href', '')}\n"
        f"   {_one_line(result.get('body', ''))[:SNIPPET_MAX_CHARS]}"
        for number, result in enumerate(results[:max_results], start=1)
    )


def _search_duckduckgo(query: str, timeout_seconds: float, max_results: int) -> list[dict[str, Any]]:
    # The client's own timeout bounds the thread that a search abandoned by our timeout leaves running.
    return DDGS(timeout=max(1, math.ceil(timeout_seconds))).text(query, max_results=max_results, backend="duckduckgo")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


async def describe_now(timezone: str | None = None) -> str:
    """The current time in ``timezone`` as ISO 8601 with its weekday, or a readable error for an unknown zone."""
    name = (timezone or "").strip() or "UTC"
    zone: tzinfo
    if name.upper() == "UTC":
        zone, name = UTC, "UTC"
    else:
        try:
            # Loading a zone reads its file from disk the first time.
            zone = await asyncio.to_thread(ZoneInfo, name)
        except (ValueError, LookupError, OSError):
            return f"current_datetime failed: unknown time zone {name!r}; use an IANA name such as Europe/Paris"
    now = datetime.now(zone)
    return f"{now.isoformat(timespec='seconds')} ({now.strftime('%A')}, {name})"


def ask_the_user(question: str) -> str:
    """The user's answer to ``question``: the first call pauses the graph, the resumed run returns the answer."""
    answer = interrupt({"question": question})
    return answer if isinstance(answer, str) else str(answer)


class CalculatorError(Exception):
    """An expression the calculator refuses or cannot evaluate; its message is shown to the model."""


# Bounds that keep one evaluation to microseconds, whatever the model sends.
MAX_EXPRESSION_CHARS = 1000
MAX_DEPTH = 200
MAX_INTEGER_BITS = 1100  # a little more than a float's range (~1e308), so floor(1e308) still fits
MAX_ROUND_DIGITS = 400

_BINARY_OPERATORS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPERATORS: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _round(number: float, digits: int = 0) -> float:
    if not isinstance(digits, int) or abs(digits) > MAX_ROUND_DIGITS:
        raise CalculatorError(
            f"round() takes a whole number of digits between -{MAX_ROUND_DIGITS} and {MAX_ROUND_DIGITS}"
        )
    return round(number, digits)


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "log": math.log,
    "log10": math.log10,
    "exp": math.exp,
    "floor": math.floor,
    "ceil": math.ceil,
    "abs": abs,
    "round": _round,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}
_ALLOWED = "numbers, + - * / // % **, parentheses, " + ", ".join([*_FUNCTIONS, *_CONSTANTS])


def calculate(expression: str) -> str:
    """The value of an arithmetic expression, or "calculator failed: ..." saying why it was refused."""
    try:
        return _format_number(evaluate(expression))
    except CalculatorError as error:
        return f"calculator failed: {error}"
    except ZeroDivisionError:
        return "calculator failed: division by zero"
    except OverflowError:
        return "calculator failed: the result is too large"
    except (ValueError, TypeError) as error:
        return f"calculator failed: {error}"


def evaluate(expression: str) -> int | float:
    """Evaluate over a whitelist of the syntax tree: no names but the allowed ones, no attributes, no calls
    but to the allowed functions, and no number beyond the bounds, so nothing the model writes can hang
    the worker or reach outside arithmetic."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise CalculatorError(f"not an arithmetic expression ({getattr(error, 'msg', error)})") from None
    return _evaluate(tree.body, depth=0)


def _evaluate(node: ast.expr, *, depth: int) -> int | float:
    if depth > MAX_DEPTH:
        raise CalculatorError(f"the expression is nested deeper than {MAX_DEPTH} levels")
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalculatorError(f"only numbers are allowed, not {node.value!r}")
        return _checked(node.value)
    if isinstance(node, ast.Name):
        if node.id not in _CONSTANTS:
            raise CalculatorError(f"unknown name {node.id!r}; allowed: {_ALLOWED}")
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPERATORS:
        return _checked(_UNARY_OPERATORS[type(node.op)](_evaluate(node.operand, depth=depth + 1)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPERATORS:
        left = _evaluate(node.left, depth=depth + 1)
        right = _evaluate(node.right, depth=depth + 1)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _checked(_BINARY_OPERATORS[type(node.op)](left, right))
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Attribute):
            raise CalculatorError("attribute access is not allowed")
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            called = node.func.id if isinstance(node.func, ast.Name) else type(node.func).__name__
            raise CalculatorError(f"unknown function {called!r}; allowed: {_ALLOWED}")
        if node.keywords or any(isinstance(argument, ast.Starred) for argument in node.args):
            raise CalculatorError("functions take plain positional arguments only")
        arguments = [_evaluate(argument, depth=depth + 1) for argument in node.args]
        return _checked(_FUNCTIONS[node.func.id](*arguments))
    if isinstance(node, ast.Attribute):
        raise CalculatorError("attribute access is not allowed")
    if isinstance(node, ast.BinOp | ast.UnaryOp):
        raise CalculatorError(f"the operator {type(node.op).__name__} is not allowed; allowed: {_ALLOWED}")
    raise CalculatorError(f"{type(node).__name__} is not allowed; allowed: {_ALLOWED}")


def _check_power(base: int | float, exponent: int | float) -> None:
    # Only an integer power can take long: a float power is one libm call that overflows at once.
    integers = isinstance(base, int) and isinstance(exponent, int)
    if integers and exponent > 0 and abs(base) > 1 and exponent * math.log2(abs(base)) > MAX_INTEGER_BITS:
        raise CalculatorError("the result is too large")


def _checked(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalculatorError("the result is not a real number")
    if isinstance(value, int) and value.bit_length() > MAX_INTEGER_BITS:
        raise CalculatorError("the result is too large")
    if isinstance(value, float) and math.isinf(value):
        raise CalculatorError("the result is too large")
    if isinstance(value, float) and math.isnan(value):
        raise CalculatorError("the result is not a number")
    return value


def _format_number(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)
