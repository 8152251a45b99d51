"""Metrics as prompt files: prompts/evals/<name>.md, YAML front matter then the judge's instructions.

A new metric is a new file, no code. The front matter declares ``name``, ``description``, ``higher_is_better``
(whether the judge's score grows with quality) and ``threshold`` (the quality at which one answer passes). The
prompt version is a hash of the whole file, so any edit starts a new series of scores instead of mixing with old
ones.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentctl.resources import prompts_dir
from server.errors import AppError

_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*\n(.*)\Z", re.S)
_METRIC_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
PROMPT_VERSION_LENGTH = 12


class MetricFileError(AppError):
    """A metric file that cannot be used: the operator fixes the file, so the message names it."""

    status = 500
    code = "metric-file-invalid"
    title = "Invalid metric file"


class _FrontMatter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_METRIC_NAME.pattern)
    description: str = ""
    higher_is_better: bool
    threshold: float = Field(ge=0, le=1)


@dataclass(frozen=True)
class EvalMetric:
    name: str
    description: str
    higher_is_better: bool
    threshold: float  # on the quality scale: higher is better
    instructions: str
    prompt_version: str
    path: Path

    def quality(self, score: float) -> float:
        """The judge's score on the one scale reports use, where higher is always better."""
        return score if self.higher_is_better else round(1.0 - score, 9)  # 1 - 0.9 is 0.09999999999999998


def metrics_directory(configured: Path | None) -> Path:
    return configured if configured is not None else prompts_dir() / "evals"


def parse_metric_file(path: Path, raw: bytes) -> EvalMetric:
    """One metric from the bytes of its file; MetricFileError names the file and what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MetricFileError(f"{path}: not UTF-8 text") from None
    found = _FRONT_MATTER.match(text)
    if found is None:
        raise MetricFileError(f"{path}: must start with front matter between two '---' lines")
    try:
        front = _FrontMatter.model_validate(yaml.safe_load(found.group(1)) or {})
    except yaml.YAMLError as error:
        raise MetricFileError(f"{path}: front matter is not YAML: {error}") from None
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'front matter'}: {e['msg']}" for e in error.errors())
        raise MetricFileError(f"{path}: {problems}") from None
    if front.name != path.stem:
        raise MetricFileError(f"{path}: name {front.name!r} must match the file name")
    instructions = found.group(2).strip()
    if not instructions:
        raise MetricFileError(f"{path}: says nothing for the judge to do")
    return EvalMetric(
        name=front.name,
        description=front.description,
        higher_is_better=front.higher_is_better,
        threshold=front.threshold,
        instructions=instructions,
        prompt_version=prompt_version_of(raw),
        path=path,
    )


def prompt_version_of(raw: bytes) -> str:
    """A judge prompt's version: a hash of its file, so that any edit starts a new series of verdicts."""
    return hashlib.sha256(raw).hexdigest()[:PROMPT_VERSION_LENGTH]


def read_metrics(directory: Path) -> dict[str, EvalMetric]:
    """Every metric file of ``directory`` by name (a handful of small files, read before any event loop runs)."""
    if not directory.is_dir():
        raise MetricFileError(f"no metrics folder at {directory}")
    metrics = {}
    for path in sorted(directory.glob("*.md")):
        metric = parse_metric_file(path, path.read_bytes())
        metrics[metric.name] = metric
    if not metrics:
        raise MetricFileError(f"{directory} holds no metric files (*.md)")
    return metrics
