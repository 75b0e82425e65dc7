"""The start-up check of the assignments, run by ``tensorgrade serve`` before its workers start.

Every worker loads the assignments when it starts (``create_app``). An assignment setting that
cannot work (``TENSORGRADE_ASSIGNMENTS_DIR`` that is no folder, a file with a mistake, an
element budget smaller than a problem's key) would make every worker fail at start-up, and
uvicorn would start them again, forever. So ``tensorgrade serve`` loads them once first, the
way a worker does, and stops with one line and exit status 2 instead.

Loading them computes each problem's key, so it needs torch. With one worker the supervisor
is the worker and loads torch anyway: it checks in its own process. With several, the
supervisor stays without torch (a few hundred megabytes it has no use for) and the check runs
in a short-lived child process: ``python -m service.preflight``, which prints the problem and
exits 2, or exits 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from service.settings import Settings, get_settings

PROBLEM_STATUS = 2
"""The child's exit status for assignments that cannot be served (its output says why)."""


def assignments_problem(settings: Settings) -> str | None:
    """Why the assignments cannot be loaded as a worker loads them, on one line; ``None`` when
    they can. Imports torch."""
    from service.grading.catalogue import AssignmentFileError, catalogue_from_settings
    from service.grading.checker import VariantScreen, spec_validator

    try:
        catalogue_from_settings(settings, spec_validator(settings), VariantScreen(settings))
    except (AssignmentFileError, OSError, ValueError) as error:
        return " ".join(str(error).split())
    return None


def assignments_problem_in_child() -> str | None:
    """``assignments_problem`` of the settings in this process's environment, worked out in a
    child process, so that this one does not import torch.

    Raises:
        RuntimeError: the child failed otherwise (its last line of output says how).
    """
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the child is no worker: it counts nothing
    # The child imports the same ``service`` package as this process, wherever it runs from.
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "service.preflight"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode == 0:
        return None
    if done.returncode == PROBLEM_STATUS and done.stdout.strip():
        return done.stdout.strip().splitlines()[-1]
    output = (done.stderr or done.stdout).strip().splitlines()
    raise RuntimeError(
        f"the start-up check of the assignments exited with {done.returncode}"
        + (f": {output[-1]}" if output else "")
    )


def main() -> int:
    problem = assignments_problem(get_settings())
    if problem is None:
        return 0
    print(problem)
    return PROBLEM_STATUS


if __name__ == "__main__":
    sys.exit(main())
