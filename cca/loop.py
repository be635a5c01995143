"""The CCA loop: generator agents plan and run one-tool subtasks, discriminator agents check the results with
understanding tools and write feedback, generators reflect on their own and each other's plans and feedback, and
a judge keeps the best image or stops.

Every role is one or two language-model calls. A call's messages are a system prompt (the role) and a user message
holding a JSON payload (what the role sees); its reply must validate against the role's schema
(`cca.schemas`) and, for tool calls, against the tool's argument schema, or it is sent back with the reason and
at most `retries` times retried. A reply that never validates is logged and its step counts as failed; nothing
unvalidated is executed.

Everything a run does lands in its folder: input.png, images/r{round}_a{agent}_s{subtask}.png, log.jsonl (one
event per line: plans, tool calls, checks, answers, feedback, verdicts, rejected replies), result.json and
contact_sheet.png (a row per round: the input, each agent's image, the judge's pick).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data_tools.files import atomic_write_json
from data_tools.logs import get_logger

from .llm import ChatModel, LLMError, ReplyError, ask
from .schemas import Answers, Checks, Feedback, Plan, Reflection, Subtask, ToolCall, Verdict
from .tools import TOOLS, RunFolder, ToolContext, ToolError, run_tool

log = get_logger(__name__)

INPUT = "input.png"
SHEET_TILE = 128  # px per tile of the contact sheet (32 px scenes are shown 4x)

SYSTEM = {
    "planner": "You are the planner of an image-editing agent. Split the user's instruction into subtasks that one "
               "tool each can do, in the order they should run. Use only the tools listed.",
    "executor": "You are the tool executor of an image-editing agent. For the subtask given, choose one editing "
                "tool and write its arguments. The image argument is the path given as 'image'.",
    "reflector": "You are the reflector of an image-editing agent. Revise your plan from your own feedback and the "
                 "other agents' plans and feedback: reorder, rephrase or keep subtasks, and say in 'advice' what "
                 "to change in each (another seed, other scales, another tool).",
    "discriminator": "You are a discriminator. For each subtask, write yes/no questions (yes = done right) on its "
                     "local effect, its global effect and what must stay unchanged, each answered by one "
                     "understanding tool on the subtask's input and output images.",
    "answerer": "You are a discriminator. Answer each question yes or no from its tool's output; quote the numbers.",
    "summariser": "You summarise a discriminator's answers into feedback per subtask: ok, and what went wrong, with "
                  "the numbers.",
    "judge": "You are the judge. Pick the candidate image that best carries out the instruction, from its "
             "feedback; stop when it is fully done.",
}


@dataclass
class AgentsConfig:
    agents: int = 2
    rounds: int = 3
    reflection: bool = True  # off: later rounds rerun the first plan with fresh seeds (no feedback used)
    cooperation: bool = True  # off: a reflector sees only its own plan and feedback
    seed: int = 0
    retries: int = 2  # re-asks after a reply that fails its schema

    def __post_init__(self) -> None:
        if not 1 <= self.agents <= 8 or not 1 <= self.rounds <= 10:
            raise ValueError(f"agents must be 1-8 and rounds 1-10, got {self.agents}, {self.rounds}")


@dataclass
class AgentState:
    index: int
    plan: list[Subtask] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)  # per subtask: tool, arguments, input, output, error
    feedback: dict[str, Any] | None = None
    image: str = INPUT

    def view(self) -> dict[str, Any]:
        return {"agent": self.index, "plan": [s.model_dump() for s in self.plan], "calls": self.calls,
                "feedback": self.feedback}


class RunLog:
    """log.jsonl, a line per event, flushed as it goes and fsynced at close."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = open(path, "w", encoding="utf-8")  # one run per folder

    def event(self, kind: str, **data: Any) -> None:
        self._fh.write(json.dumps({"event": kind, **data}, default=str) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()


def _payload(role: str, **data: Any) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM[role]},
            {"role": "user", "content": json.dumps({"role": role, **data}, default=str)}]


class CCARun:
    """One instruction on one image, in a run folder."""

    def __init__(self, llm: ChatModel, ctx: ToolContext, cfg: AgentsConfig | None = None):
        self.llm, self.ctx, self.cfg = llm, ctx, cfg or AgentsConfig()
        self.run = ctx.run
        needs = {"instruct_edit": ctx.instruct_model, "text_agreement": ctx.hdvila_model,
                 "face_attributes": ctx.face_oracle}
        usable = [t for t in map(TOOLS.get, TOOLS.list()) if needs.get(t.name, True)]  # model tools need their model
        self.edit_tools = [t.describe() for t in usable if t.kind == "edit"]
        self.understand_tools = [t.describe() for t in usable if t.kind == "understand"]
        self.log = RunLog(self.run.root / "log.jsonl")
        self.calls = 0

    # --------------------------------------------------------------------------------------------- asking

    def _ask(self, role: str, schema, payload: dict[str, Any], agent: int, round_: int, validate=None):
        self.calls += 1

        def record(text: str, error: str | None) -> None:
            self.log.event("reply", role=role, agent=agent, round=round_, text=text[:4000], rejected=error)

        try:
            return ask(self.llm, _payload(role, **payload), schema, seed=self.cfg.seed * 7919 + self.calls,
                       retries=self.cfg.retries, validate=validate, on_reply=record)
        except ReplyError as exc:
            self.log.event("no_valid_reply", role=role, agent=agent, round=round_, error=str(exc))
            return None
        except LLMError as exc:  # the model could not answer (a server down through its retries, a long prompt)
            self.log.event("llm_error", role=role, agent=agent, round=round_, error=str(exc))
            return None

    # --------------------------------------------------------------------------------------------- roles

    def plan(self, instruction: str, agent: AgentState) -> list[Subtask]:
        seen = self._understand("find_objects", {"image": INPUT})
        plan = self._ask("planner", Plan, {"instruction": instruction, "tools": self.edit_tools,
                                           "input_objects": seen.get("objects")}, agent.index, 0)
        return plan.subtasks if plan else []

    def _valid_call(self, call: ToolCall, current: str) -> None:
        names = [t["name"] for t in self.edit_tools]
        if call.tool not in names:
            raise ValueError(f"{call.tool!r} is not an editing tool of this run; choose one of {names}")
        TOOLS.get(call.tool).validate(call.arguments)  # ToolError is a ValueError: the reason goes back
        if call.arguments.get("image") != current:  # the chain of subtasks is the loop's, not the model's
            raise ValueError(f"the image argument must be {current!r}, the result of the previous subtask")

    def execute(self, agent: AgentState, round_: int, previous: dict[str, dict[str, Any]]) -> None:
        """Run the agent's plan from the input image; one image per subtask."""
        current, agent.calls = INPUT, []
        for k, sub in enumerate(agent.plan):
            payload = {"subtask": sub.text, "advice": sub.advice, "image": current, "agent": agent.index,
                       "round": round_, "tools": self.edit_tools, "previous_call": previous.get(sub.text)}
            call = self._ask("executor", ToolCall, payload, agent.index, round_,
                             validate=lambda c, current=current: self._valid_call(c, current))
            record: dict[str, Any] = {"subtask": k, "text": sub.text, "input": current, "output": current,
                                      "tool": call.tool if call else None, "arguments": call.arguments if call else None,
                                      "error": None if call else "no valid tool call"}
            if call:
                out = f"images/r{round_}_a{agent.index}_s{k}.png"
                try:
                    record["output"] = run_tool(self.ctx, call.tool, call.arguments, out)["image"]
                except ToolError as exc:
                    record["error"] = str(exc)
            self.log.event("tool_call", agent=agent.index, round=round_, **record)
            agent.calls.append(record)
            current = record["output"]
        agent.image = current

    def discriminate(self, instruction: str, agent: AgentState, round_: int) -> dict[str, Any]:
        """Checks, answers and feedback for the agent's subtasks; a subtask whose tool call failed is not
        checked (its feedback is the error)."""
        ran = [c for c in agent.calls if not c["error"]]
        failed = {c["subtask"]: f"the tool call failed: {c['error']}" for c in agent.calls if c["error"]}
        answered: list[dict[str, Any]] = []
        if ran:
            subtasks = [{"index": c["subtask"], "text": c["text"], "tool": c["tool"], "arguments": c["arguments"],
                         "input": c["input"], "output": c["output"]} for c in ran]
            ran_ids = {c["subtask"] for c in ran}

            def valid_checks(checks: Checks) -> None:
                unchecked = ran_ids - {ch.subtask for ch in checks.checks}
                if unchecked:
                    raise ValueError(f"write at least one check for every subtask; none for {sorted(unchecked)}")
                for ch in checks.checks:
                    if ch.subtask not in ran_ids:
                        raise ValueError(f"check {ch.question!r} names subtask {ch.subtask}, not one of {sorted(ran_ids)}")
                    if ch.tool not in TOOLS or TOOLS.get(ch.tool).kind != "understand":
                        raise ValueError(f"{ch.tool!r} is not an understanding tool")
                    TOOLS.get(ch.tool).validate(ch.arguments)

            checks = self._ask("discriminator", Checks, {"instruction": instruction, "subtasks": subtasks,
                                                         "tools": self.understand_tools}, agent.index, round_,
                               validate=valid_checks)
            outputs = []
            for i, ch in enumerate(checks.checks if checks else []):
                try:
                    out = self._understand(ch.tool, ch.arguments)
                except ToolError as exc:
                    out = {"error": str(exc)}
                outputs.append({"check": i, "subtask": ch.subtask, "question": ch.question, "tool": ch.tool,
                                "tool_output": out})
            self.log.event("checks", agent=agent.index, round=round_, checks=outputs)
            if outputs:
                answers = self._ask("answerer", Answers, {"checks": outputs}, agent.index, round_,
                                    validate=lambda a: _cover(a, len(outputs)))
                by_check = {a.check: a for a in answers.answers} if answers else {}
                for o in outputs:
                    a = by_check.get(o["check"])
                    answered.append({"check": o["check"], "subtask": o["subtask"], "question": o["question"],
                                     "answer": a.answer if a else "no",
                                     "evidence": a.evidence if a else "no valid answer"})
        feedback = None
        if answered:
            feedback = self._ask("summariser", Feedback, {"subtasks": [{"index": c["subtask"], "text": c["text"]}
                                                                       for c in ran], "answers": answered},
                                 agent.index, round_)
        per_subtask = {c["subtask"]: {"ok": False, "feedback": "not checked"} for c in agent.calls}
        said_no = {a["subtask"] for a in answered if a["answer"] != "yes"}
        if feedback:
            for f in feedback.subtasks:
                if f.subtask in per_subtask and f.subtask not in failed:
                    # a summary cannot pass a subtask whose own checks said no
                    per_subtask[f.subtask] = {"ok": f.ok and f.subtask not in said_no, "feedback": f.feedback}
        for k, msg in failed.items():
            per_subtask[k] = {"ok": False, "feedback": msg}
        result = {"subtasks": per_subtask, "answers": answered, "summary": feedback.summary if feedback else "",
                  "passed": sum(a["answer"] == "yes" for a in answered), "checked": len(answered),
                  "all_ok": bool(per_subtask) and all(v["ok"] for v in per_subtask.values())}
        self.log.event("feedback", agent=agent.index, round=round_, **result)
        return result

    def _understand(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return run_tool(self.ctx, name, arguments)

    def reflect(self, instruction: str, agent: AgentState, others: Sequence[AgentState], round_: int) -> list[Subtask]:
        payload = {"instruction": instruction, "own": agent.view(), "tools": self.edit_tools,
                   "others": [o.view() for o in others] if self.cfg.cooperation else []}
        out = self._ask("reflector", Reflection, payload, agent.index, round_)
        if out is None:
            return agent.plan
        self.log.event("reflection", agent=agent.index, round=round_, reason=out.reason,
                       plan=[s.model_dump() for s in out.subtasks])
        return out.subtasks

    def judge(self, instruction: str, candidates: list[dict[str, Any]], round_: int) -> tuple[int, bool]:
        n = len(candidates)

        def in_range(v: Verdict) -> None:
            if v.best >= n:
                raise ValueError(f"best must be a candidate index below {n}")

        verdict = self._ask("judge", Verdict, {"instruction": instruction, "candidates": candidates}, -1, round_,
                            validate=in_range)
        best, stop = (verdict.best, verdict.stop) if verdict else (0, False)
        self.log.event("verdict", round=round_, best=best, stop=stop, reason=verdict.reason if verdict else "none",
                       candidate=candidates[best])
        return best, stop

    # --------------------------------------------------------------------------------------------- loop

    def __call__(self, image: np.ndarray, instruction: str) -> dict[str, Any]:
        cfg = self.cfg
        self.run.write_image(np.asarray(image, np.uint8), INPUT)
        self.log.event("start", instruction=instruction, agents=cfg.agents, rounds=cfg.rounds,
                       reflection=cfg.reflection, cooperation=cfg.cooperation, llm=self.llm.name, seed=cfg.seed)
        agents = [AgentState(i) for i in range(cfg.agents)]
        first_plans: dict[int, list[Subtask]] = {}
        best: dict[str, Any] | None = None
        sheet_rows = []
        try:
            for r in range(cfg.rounds):
                for a in agents:
                    previous = {c["text"]: {"tool": c["tool"], "arguments": c["arguments"]} for c in a.calls}
                    if r == 0:
                        a.plan = self.plan(instruction, a)
                        first_plans[a.index] = list(a.plan)
                        self.log.event("plan", agent=a.index, round=r, plan=[s.model_dump() for s in a.plan])
                    elif cfg.reflection:
                        a.plan = self.reflect(instruction, a, [o for o in agents if o is not a], r)
                    else:
                        a.plan, previous = list(first_plans[a.index]), {}
                    self.execute(a, r, previous)
                for a in agents:
                    a.feedback = self.discriminate(instruction, a, r)
                candidates = ([best] if best else []) + [
                    {"agent": a.index, "round": r, "image": a.image, "passed": a.feedback["passed"],
                     "checked": a.feedback["checked"], "all_ok": a.feedback["all_ok"],
                     "subtasks": len(a.plan), "summary": a.feedback["summary"]} for a in agents]
                pick, stop = self.judge(instruction, candidates, r)
                best = candidates[pick]
                sheet_rows.append([INPUT] + [a.image for a in agents] + [best["image"]])
                if stop:
                    break
        finally:
            self.log.close()
        result = {"instruction": instruction, "image": best["image"] if best else INPUT, "best": best,
                  "rounds_run": len(sheet_rows), "llm_calls": self.calls, "llm": self.llm.name,
                  "config": cfg.__dict__}
        atomic_write_json(self.run.root / "result.json", result)
        self._contact_sheet(sheet_rows)
        return result

    def _contact_sheet(self, rows: list[list[str]]) -> None:
        import torch

        from data_tools.images import from_uint8_images, save_image_grid

        if not rows:
            return
        from PIL import Image

        images = [self.run.read_image(p) for row in rows for p in row]
        h, w = images[0].shape[:2]
        shrink = min(1.0, SHEET_TILE / max(h, w))  # tiles of at most SHEET_TILE px, whatever the input's size
        h, w = max(1, round(h * shrink)), max(1, round(w * shrink))
        images = [im if im.shape[:2] == (h, w) else np.asarray(Image.fromarray(im).resize((w, h))) for im in images]
        grid = from_uint8_images(np.stack(images))
        save_image_grid(torch.as_tensor(grid), self.run.root / "contact_sheet.png", nrow=len(rows[0]),
                        scale=max(1, SHEET_TILE // max(h, w)))


def _cover(answers: Answers, n: int) -> None:
    missing = set(range(n)) - {a.check for a in answers.answers}
    if missing:
        raise ValueError(f"answer every check; missing {sorted(missing)}")


def run_agents(image: np.ndarray, instruction: str, llm: ChatModel, out_dir: str | os.PathLike, *,
               instruct_model: str | os.PathLike | None = None, hdvila_model: str | os.PathLike | None = None,
               face_oracle: str | os.PathLike | None = None, edit_steps: int | None = None,
               cfg: AgentsConfig | None = None) -> dict[str, Any]:
    """`hdvila agents edit`: one CCA run in `out_dir`; returns result.json's content."""
    ctx = ToolContext(RunFolder(out_dir), instruct_model=instruct_model, hdvila_model=hdvila_model,
                      face_oracle=face_oracle, edit_steps=edit_steps)
    return CCARun(llm, ctx, cfg)(image, instruction)


__all__ = ["AgentsConfig", "CCARun", "INPUT", "RunLog", "SYSTEM", "run_agents"]
