"""The reply of each role, as a pydantic model: a reply is acted on only once it validates against its schema."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SUBTASKS = 8
MAX_CHECKS = 16


class Reply(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Subtask(Reply):
    text: str = Field(min_length=1, max_length=300, description="one edit that one tool can do")
    advice: str = Field("", max_length=500, description="what to do differently from last round (reflection)")


class Plan(Reply):
    """Planner: the instruction split into one-tool subtasks, in the order to run them."""
    subtasks: list[Subtask] = Field(min_length=1, max_length=MAX_SUBTASKS)


class Reflection(Reply):
    """Reflector: the revised plan (it may reorder, rephrase or keep subtasks) and why."""
    subtasks: list[Subtask] = Field(min_length=1, max_length=MAX_SUBTASKS)
    reason: str = Field("", max_length=1000)


class ToolCall(Reply):
    """Tool executor: one tool by name and its arguments (checked against that tool's own schema)."""
    tool: str = Field(min_length=1, max_length=64)
    arguments: dict[str, Any] = Field(default_factory=dict)


class Check(Reply):
    subtask: int = Field(ge=0, lt=MAX_SUBTASKS, description="index of the subtask this checks")
    question: str = Field(min_length=1, max_length=300, description="a yes/no question; yes means the edit is right")
    tool: str = Field(min_length=1, max_length=64)
    arguments: dict[str, Any] = Field(default_factory=dict)


class Checks(Reply):
    """Discriminator, step 1: yes/no questions on local effects, global effects and what must stay unchanged,
    each to be answered with an understanding tool."""
    checks: list[Check] = Field(min_length=1, max_length=MAX_CHECKS)


class Answer(Reply):
    check: int = Field(ge=0, lt=MAX_CHECKS)
    answer: Literal["yes", "no"]
    evidence: str = Field("", max_length=300)


class Answers(Reply):
    """Discriminator, step 2: each question answered from its tool's output."""
    answers: list[Answer] = Field(min_length=1, max_length=MAX_CHECKS)


class SubtaskFeedback(Reply):
    subtask: int = Field(ge=0, lt=MAX_SUBTASKS)
    ok: bool
    feedback: str = Field("", max_length=500)


class Feedback(Reply):
    """Summariser: the answers condensed into feedback per subtask, numbers included."""
    subtasks: list[SubtaskFeedback] = Field(min_length=1, max_length=MAX_SUBTASKS)
    summary: str = Field("", max_length=1000)


class Verdict(Reply):
    """Judge: the best candidate image, and whether to stop."""
    best: int = Field(ge=0, description="index of the best candidate")
    stop: bool
    reason: str = Field("", max_length=500)


__all__ = ["Answer", "Answers", "Check", "Checks", "Feedback", "MAX_CHECKS", "MAX_SUBTASKS", "Plan", "Reflection",
           "Subtask", "SubtaskFeedback", "ToolCall", "Verdict"]
