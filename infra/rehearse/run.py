"""`make rehearse`: deploy infra/template.yaml into moto and run the real binaries through it.

1. The SAM template is translated to CloudFormation locally (aws-sam-translator) and deployed into
   moto with the parameters a first `sam deploy --guided` asks for; what moto cannot create is
   listed as "not rehearsed".
2. Every function's FERRY_* settings, as deployed, are checked against what its code reads.
3. With moto's IAM checks on, each function runs as its built debug binary under a local Lambda
   Runtime API, with its deployed environment and its own role's credentials, wired as the stack
   wires it: the bucket's notification filters, the SQS mapping's queue and batch size, the HTTP
   routes. Any AccessDenied on a legitimate step fails, naming the role, the action and the resource.

Usage: python -m rehearse [--template PATH] [--fault NAME] [--only votes,jobs,notifications]
Exit status 0 when everything rehearsed passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import envcheck, scenarios
from . import template as T
from .stack import Stack
from .systems import Systems

sys.path.insert(0, str(T.ROOT / "infra"))
import check_functions  # noqa: E402


@dataclass
class Result:
    failures: list[str] = field(default_factory=list)
    not_rehearsed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def bin_dir() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR")
    return (Path(target) if target else T.ROOT / "target") / "debug"


# What moto does not evaluate, whatever the template says.
MOTO_LIMITS = [
    "IAM conditions (s3:prefix, dynamodb:LeadingKeys): moto treats every Condition as met",
    "resource policies (DataBucketPolicy, QueuesTlsOnlyPolicy) and SigV4 transport rules (TLS-only)",
    "X-Ray tracing, CloudWatch Logs delivery, reserved concurrency, memory and timeouts beyond the deadline handed to the runtime",
]


def rehearse(
    template: Path = T.TEMPLATE,
    fault: str | None = None,
    systems: list[str] | None = None,
    binaries: Path | None = None,
    say: Callable[[str], None] = print,
    keep_logs: bool = True,
) -> Result:
    result = Result()
    sam = T.load_sam(template)
    if fault:
        spec = T.load_fault(fault)
        sam = T.apply_fault(sam, spec)
        say(f"fault {fault}: {spec['description']}")
        systems = systems or spec.get("systems")
    workdir = Path(tempfile.mkdtemp(prefix="ferry-rehearsal-"))
    stack = Stack(sam, workdir)
    runner: Systems | None = None
    try:
        stack.start()
        stack.deploy()
        say(f"deployed stack {'ferry-dev'} into moto at {stack.endpoint} ({len(stack.physical)} resources)")
        for line in stack.not_rehearsed:
            say(f"not rehearsed: {line}")
        for line in stack.completed:
            say(f"completed by the rehearsal: {line}")
        result.not_rehearsed = list(stack.not_rehearsed)

        crates = {b.name: b.crate_dir for b in check_functions.workspace_binaries(check_functions.cargo_metadata(T.ROOT)).values()}
        deployed = {fn: f.env for fn, f in stack.functions.items() if fn in crates}
        env_problems = envcheck.check(deployed, crates)
        for p in env_problems:
            say(f"FAILED: environment: {p}")
        result.failures += [f"environment: {p}" for p in env_problems]
        if not env_problems:
            say(f"  ok: environment: the FERRY_* settings of {len(deployed)} functions match what their code reads")

        stack.enforce_iam(uploader_prefixes=["data/", "/data/"])
        say("IAM enforced: every call below runs with one role's credentials")
        runner = Systems(stack, binaries or bin_dir(), workdir, say)
        scenarios.run(runner, systems or list(scenarios.ALL))
        result.failures += runner.failures
        result.notes += runner.notes
    except Exception as e:  # the rehearsal itself could not run: a failure too
        result.failures.append(f"rehearsal: {type(e).__name__}: {e}")
        say(f"FAILED: rehearsal: {type(e).__name__}: {e}")
    finally:
        if runner is not None:
            runner.stop()
        stack.stop()
    for line in MOTO_LIMITS:
        result.not_rehearsed.append(line)
    say("")
    say("not rehearsed (moto cannot): " + "; ".join(MOTO_LIMITS))
    for n in result.notes:
        say(f"note: {n}")
    if result.failures:
        say(f"rehearsal FAILED ({len(result.failures)})" + (f"; logs of moto and each function: {workdir}" if keep_logs else ""))
    else:
        say("rehearsal passed")
    if not (keep_logs and result.failures):
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rehearse", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--template", type=Path, default=T.TEMPLATE)
    p.add_argument("--fault", choices=T.fault_names())
    p.add_argument("--only", default="", help="comma-separated systems: " + ",".join(scenarios.ALL))
    args = p.parse_args(argv)
    only = [s for s in args.only.split(",") if s] or None
    start = time.time()
    result = rehearse(args.template, args.fault, only)
    print(f"({time.time() - start:.0f} s)")
    return 0 if result.ok else 1
