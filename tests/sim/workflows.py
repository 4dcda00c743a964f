"""Random workflows and command schedules: the part of a schedule that is not a fault.

Every step runs one of the simulator's probe actions (see `tests.sim.probe`), whose
outcome is a function of the step's committed history alone: attempt `i` (counting only
attempts that ended by failing, not those a restart lost) does `plan[i]`. So a run that
suffers faults must reach the same outcome as the fault-free run, and any difference is a
finding, except where the outcome is legitimately a matter of timing (see
`tests.sim.invariants`).

Features can be switched off by name with STEPSTREAM_SIM_WITHOUT (comma-separated), to
tell apart the findings of one feature from another's.
"""

from __future__ import annotations

import functools
import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from engine_service.core.definitions import parse_definition
from engine_service.core.errors import EngineError
from engine_service.core.model import WorkflowDefinition

FEATURES = frozenset(
    {
        "conditions",  # `when` over inputs and upstream steps' status and output
        "macros",  # CEL macros over `steps` in conditions
        "retries",  # max_attempts > 1, backoff, jitter
        "step_timeouts",  # a timeout on probe steps ("slow" attempts time out)
        "workflow_timeouts",  # a timeout on the workflow
        "continue_on_error",
        "fallbacks",  # probe fallbacks
        "compensations",  # probe compensations, on_failure: COMPENSATE
        "children",  # `workflow` steps with nested child workflows
        "child_timeouts",  # a timeout on `workflow` steps
        "child_handlers",  # fallbacks and compensations through `workflow`
        "missing_inputs",  # steps that read an input given only on resume
        "commands",  # cancel, pause, resume at random times
        "child_commands",  # commands sent to a child execution
        "impatient_clients",  # a client that gives up on its command (its call cancelled)
        "small_slots",  # few engine-wide step slots
        "concurrency_limits",  # the workflow's max_concurrent_steps
    }
)

CommandKind = Literal["cancel", "pause", "resume"]
Outcome = Literal["ok", "fail", "fatal", "slow"]

# Step timeouts and attempt durations sit on different grids so they never tie.
STEP_TIMEOUT = 2.5
SLOW_SECONDS = 4.0
DURATIONS = (0.0, 0.5, 1.0, 1.5, 2.0)
LATE_VALUE = 5


def enabled_features() -> frozenset[str]:
    without = {name.strip() for name in os.environ.get("STEPSTREAM_SIM_WITHOUT", "").split(",")}
    unknown = without - FEATURES - {""}
    if unknown:
        raise ValueError(f"STEPSTREAM_SIM_WITHOUT names unknown features: {sorted(unknown)}")
    return FEATURES - without


@dataclass(frozen=True)
class RootPlan:
    workflow_id: str
    inputs: Mapping[str, Any]
    at: float
    process: int


@dataclass(frozen=True)
class CommandPlan:
    kind: CommandKind
    root: int
    at: float
    yields: int
    process: int
    inputs: Mapping[str, Any] = field(default_factory=dict)
    # Sent to one of the root's unfinished descendants (drawn when it is sent), not to it.
    child: bool = False
    # The client gives up after this many seconds (then loop turns): its call is cancelled,
    # as gRPC cancels the handler of a client that went away. -1: it waits.
    give_up: float = -1.0
    give_up_turns: int = 0


@dataclass(frozen=True)
class Scenario:
    """The workflows, the runs started and the commands sent: what faults do not change."""

    seed: int
    definitions: tuple[Mapping[str, Any], ...]  # in registration order (children first)
    roots: tuple[RootPlan, ...]
    commands: tuple[CommandPlan, ...]
    processes: int
    slots: int
    # True: single-process deployment (SQLite): a restart takes every run over at once.
    single_process: bool
    # LeaseSettings (duration, interval) of every process.
    lease: tuple[float, float] = (10.0, 2.0)

    @functools.cached_property
    def key(self) -> str:
        """Tells scenarios apart for the caches, whatever generator drew them."""
        return json.dumps([self.seed, self.processes, self.definitions], sort_keys=True)

    def definition(self, workflow_id: str) -> Mapping[str, Any]:
        return next(d for d in self.definitions if d["id"] == workflow_id)

    def on_one_process(self) -> Scenario:
        """The same scenario deployed as SQLite is: one engine process, which takes every
        run over when it restarts."""
        return replace(
            self,
            processes=1,
            single_process=True,
            roots=tuple(replace(r, process=0) for r in self.roots),
            commands=tuple(replace(c, process=0) for c in self.commands),
        )


TENANT = "default"
_parsed: dict[str, dict[str, WorkflowDefinition | EngineError]] = {}


def parsed_definitions(scenario: Scenario) -> dict[str, WorkflowDefinition | EngineError]:
    """Each definition parsed as registering it does, or why it was refused. Parsing
    (JSON Schema validation above all) costs more than running most schedules, so it is
    done once per scenario."""
    if scenario.key not in _parsed:
        if len(_parsed) > 64:
            _parsed.clear()
        found: dict[str, WorkflowDefinition | EngineError] = {}
        for data in scenario.definitions:
            try:
                found[str(data["id"])] = parse_definition({**data, "tenant": TENANT})
            except EngineError as exc:
                found[str(data["id"])] = exc
        _parsed[scenario.key] = found
    return _parsed[scenario.key]


class _Maker:
    """Draws one scenario's workflows; children are drawn depth first."""

    def __init__(self, rng: random.Random, features: frozenset[str], prefix: str) -> None:
        self.rng = rng
        self.features = features
        self.prefix = prefix
        self.definitions: list[dict[str, Any]] = []

    def has(self, feature: str) -> bool:
        return feature in self.features

    def chance(self, feature: str, p: float) -> bool:
        return self.has(feature) and self.rng.random() < p

    def workflow(self, depth: int) -> str:
        workflow_id = f"{self.prefix}-w{len(self.definitions)}-d{depth}"
        placeholder: dict[str, Any] = {"id": workflow_id}
        self.definitions.append(placeholder)  # numbered before its children
        count = self.rng.randint(1, 5 if depth == 0 else 3)
        steps = [self.step(f"s{i}", i, depth) for i in range(count)]
        placeholder.update(steps=steps, on_failure=self.failure_policy())
        if self.chance("concurrency_limits", 0.3):
            placeholder["max_concurrent_steps"] = self.rng.randint(1, 2)
        if self.chance("workflow_timeouts", 0.2):
            placeholder["timeout"] = f"{self.rng.choice((6.5, 12.5, 25.5))}s"
        # Registered after their children: move this definition behind them.
        self.definitions.remove(placeholder)
        self.definitions.append(placeholder)
        return workflow_id

    def failure_policy(self) -> str:
        choices = ["STOP", "STOP", "CONTINUE"]
        if self.has("compensations"):
            choices += ["COMPENSATE", "COMPENSATE"]
        return self.rng.choice(choices)

    def step(self, step_id: str, index: int, depth: int) -> dict[str, Any]:
        earlier = [f"s{j}" for j in range(index)]
        deps = sorted(self.rng.sample(earlier, k=min(len(earlier), self.rng.randint(0, 2))))
        child = depth < 2 and self.chance("children", 0.2)
        timed = not child and self.chance("step_timeouts", 0.3)
        retry = self.retry()
        step: dict[str, Any] = {"id": step_id, "depends_on": deps, "retry": retry}
        if child:
            step["action"] = "workflow"
            step["parameters"] = self.child_call(depth)
        else:
            step["action"] = "probe"
            step["parameters"] = self.probe_parameters(deps, timed=timed, retry=retry)
        if timed:
            step["timeout"] = f"{STEP_TIMEOUT}s"
        elif child and self.chance("child_timeouts", 0.15):
            # How long a child takes depends on the faults its processes suffer, so a
            # timeout around one makes the outcome a matter of timing (not compared).
            step["timeout"] = f"{self.rng.choice((2.5, 6.5))}s"
        if self.chance("continue_on_error", 0.2):
            step["continue_on_error"] = True
        if deps and self.chance("conditions", 0.3):
            step["when"] = self.condition(deps)
        elif self.chance("conditions", 0.1):
            step["when"] = self.rng.choice(("inputs.flag", "!inputs.flag"))
        if self.chance("fallbacks", 0.25):
            step["fallback"] = self.handler("probe_fallback", depth)
        if self.chance("compensations", 0.3):
            step["compensate"] = self.handler("probe_undo", depth)
        return step

    def retry(self) -> dict[str, Any]:
        if not self.chance("retries", 0.6):
            return {"max_attempts": 1}
        retry: dict[str, Any] = {
            "max_attempts": self.rng.randint(2, 3),
            "initial_interval": f"{self.rng.choice((0.5, 1.0, 2.0))}s",
            "backoff_coefficient": self.rng.choice((1.0, 2.0)),
            "jitter": self.rng.choice(("NONE", "FULL")),
            "non_retryable_errors": ["Fatal"],
        }
        if self.rng.random() < 0.3:
            retry["maximum_interval"] = retry["initial_interval"]
        return retry

    def plan(self, attempts: int, timed: bool) -> list[Outcome]:
        """What each real attempt does; the last entry repeats."""
        failing: list[Outcome] = ["fail", "fail", "fatal"]
        if timed:
            failing += ["slow", "slow"]
        plan: list[Outcome] = []
        for _ in range(self.rng.randint(0, attempts)):
            plan.append(self.rng.choice(failing))
        plan.append("ok" if self.rng.random() < 0.75 else self.rng.choice(failing))
        return plan

    def probe_parameters(
        self, deps: list[str], *, timed: bool, retry: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        attempts = int((retry or {}).get("max_attempts", 1))
        parameters: dict[str, Any] = {
            "plan": self.plan(attempts, timed),
            "seconds": self.rng.choice(DURATIONS),
            "v": self.rng.randint(0, 9),
            "x": "${inputs.x}",
            "upstream": {dep: f"${{steps.{dep}.status}}" for dep in deps},
        }
        if self.chance("missing_inputs", 0.1):
            parameters["late"] = "${inputs.late}"
        return parameters

    def condition(self, deps: list[str]) -> str:
        dep = self.rng.choice(deps)
        choices = [
            f"steps.{dep}.status == 'COMPLETED'",
            f"steps.{dep}.status == 'COMPLETED' && steps.{dep}.output.v > {self.rng.randint(0, 9)}",
            f"steps.{dep}.status != 'COMPLETED' || inputs.flag",
        ]
        if self.has("macros"):
            choices += [
                "steps.all(k, steps[k].status == 'COMPLETED')",
                f"steps.exists(k, k == '{dep}' && steps[k].status == 'COMPLETED')",
            ]
        return self.rng.choice(choices)

    def handler(self, action: str, depth: int) -> dict[str, Any]:
        if depth < 2 and self.chance("child_handlers", 0.3):
            return {"action": "workflow", "parameters": self.child_call(depth)}
        outcome: Outcome = "ok" if self.rng.random() < 0.7 else "fail"
        return {
            "action": action,
            "parameters": {"plan": [outcome], "seconds": self.rng.choice(DURATIONS), "v": 1},
        }

    def child_call(self, depth: int) -> dict[str, Any]:
        child = self.workflow(depth + 1)
        return {"workflow_id": child, "inputs": {"x": "${inputs.x}", "flag": "${inputs.flag}"}}


def make_scenario(seed: int, features: frozenset[str] | None = None) -> Scenario:
    rng = random.Random(f"scenario-{seed}")
    features = enabled_features() if features is None else features
    maker = _Maker(rng, features, prefix=f"sim{seed}")
    processes = rng.choice((1, 1, 2, 2, 2, 3))
    roots = tuple(
        RootPlan(
            workflow_id=maker.workflow(0),
            inputs={"x": rng.randint(0, 9), "flag": rng.random() < 0.5},
            at=rng.choice((0.0, 0.0, rng.uniform(0, 3))),
            process=rng.randrange(processes),
        )
        for _ in range(rng.choice((1, 1, 1, 2)))
    )
    return Scenario(
        seed=seed,
        definitions=tuple(maker.definitions),
        roots=roots,
        commands=_commands(rng, features, len(roots), processes),
        processes=processes,
        slots=rng.choice((1, 2, 3, 256)) if "small_slots" in features else 256,
        single_process=processes == 1 and rng.random() < 0.5,
        lease=rng.choice(((10.0, 2.0), (10.0, 2.0), (4.0, 1.0), (30.0, 5.0))),
    )


def _impatience(rng: random.Random, features: frozenset[str]) -> dict[str, Any]:
    if "impatient_clients" not in features or rng.random() < 0.7:
        return {}
    return {"give_up": rng.choice((0.0, 0.0, 0.5, 5.0)), "give_up_turns": rng.randint(0, 8)}


def _commands(
    rng: random.Random, features: frozenset[str], roots: int, processes: int
) -> tuple[CommandPlan, ...]:
    if "commands" not in features:
        return ()
    commands: list[CommandPlan] = []
    for root in range(roots):
        for _ in range(rng.choice((0, 0, 0, 1, 2, 3))):  # any command, in any order
            commands.append(
                CommandPlan(
                    rng.choice(("cancel", "pause", "resume", "resume")),
                    root,
                    rng.uniform(0, 15),
                    rng.randint(0, 12),
                    rng.randrange(processes),
                    child="child_commands" in features and rng.random() < 0.3,
                    **_impatience(rng, features),
                )
            )
        if rng.random() < 0.25:
            commands.append(
                CommandPlan(
                    "cancel", root, rng.uniform(0, 12), rng.randint(0, 12), rng.randrange(processes)
                )
            )
        if rng.random() < 0.25:
            at = rng.uniform(0, 10)
            commands.append(
                CommandPlan("pause", root, at, rng.randint(0, 12), rng.randrange(processes))
            )
            commands.append(
                CommandPlan(
                    "resume",
                    root,
                    at + rng.uniform(0.5, 8),
                    rng.randint(0, 12),
                    rng.randrange(processes),
                    inputs={"x": rng.randint(10, 19)},
                    **_impatience(rng, features),
                )
            )
    return tuple(sorted(commands, key=lambda c: c.at))
