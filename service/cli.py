"""The ``tensorgrade`` command: run the service, or call one from a terminal or a grading script.

    tensorgrade serve                                   # the HTTP service
    tensorgrade shape --input-size 21 12 --kernel-size 4 5 --stride 4
    tensorgrade check check.json                        # one check, or {"checks": [...]}
    tensorgrade grade --assignment cnn-rnn --student-id s1 answers.json --gradescope results.json
    tensorgrade grade --assignment cnn-rnn submissions/ --out grades/   # a whole class
    tensorgrade keys --students students.txt --out roster.csv      # a key for each student

Client commands find the service at ``--url`` (default ``$TENSORGRADE_URL``, else
http://127.0.0.1:8000) with the key ``--api-key`` (default ``$TENSORGRADE_API_KEY``).
Exit status: 0 success (and, for ``check``, every answer correct), 1 a wrong answer or students
left ungraded, 2 a usage error or a refusal by the service (for ``check``, also a check of a
batch that the service could not judge: ``INVALID``, as the same check alone is refused).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import secrets
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.limitstore import open_storage
from service.settings import Settings, UnknownVariableError, check_environment, get_settings

URL_ENV = "TENSORGRADE_URL"  # the two of settings.CLIENT_VARIABLES: the server ignores them
API_KEY_ENV = "TENSORGRADE_API_KEY"
VARIANT_SECRET_ENV = "TENSORGRADE_VARIANT_SECRET"


class CommandError(Exception):
    """What the command was given cannot be used (the message says what and why)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tensorgrade``; returns the exit status."""
    try:
        args = parser().parse_args(argv)
    except ValidationError as error:  # a TENSORGRADE_* variable that is not valid
        print(f"tensorgrade: {settings_problem(error)}", file=sys.stderr)
        return 2
    command: Callable[[argparse.Namespace], int] = args.run
    return command(args)


def settings_problem(error: ValidationError) -> str:
    """What is wrong with the environment's settings, by variable, on one line."""
    reasons = []
    for item in error.errors(include_url=False):
        names = [str(part) for part in item.get("loc", ())]
        where = f"TENSORGRADE_{names[0].upper()}" if names else "the settings"
        reasons.append(f"{where}: {str(item.get('msg', 'invalid')).removeprefix('Value error, ')}")
    return "invalid configuration: " + "; ".join(reasons)


def _as_setting(name: str) -> Callable[[str], int]:
    """An argparse type: an int within the bounds of the setting ``name`` (``Field(ge=...,
    le=...)`` in ``Settings``), which the option stands for (``--port 70000`` ended in a
    traceback, ``--workers 0`` in one worker)."""
    metadata = Settings.model_fields[name].metadata
    low = next(m.ge for m in metadata if hasattr(m, "ge"))
    high = next(m.le for m in metadata if hasattr(m, "le"))

    def read(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not from {low} to {high}")
        return value

    return read


def parser() -> argparse.ArgumentParser:
    settings = get_settings()
    root = argparse.ArgumentParser(
        prog="tensorgrade", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = root.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default=settings.host, help="default: %(default)s")
    serve.add_argument(
        "--port", type=_as_setting("port"), default=settings.port, help="default: %(default)s"
    )
    serve.add_argument(
        "--workers",
        type=_as_setting("workers"),
        default=settings.workers,
        help="default: %(default)s",
    )
    serve.set_defaults(run=run_serve)

    health = commands.add_parser(
        "healthcheck", help="exit 0 if the local service answers /healthz (container probe)"
    )
    health.add_argument("--url", default=f"http://127.0.0.1:{settings.port}/healthz")
    health.add_argument("--timeout", type=positive_seconds, default=3.0)
    health.set_defaults(run=run_healthcheck)

    keys = commands.add_parser(
        "keys",
        help="make a roster: a fresh key for each student (TENSORGRADE_STUDENT_KEY_FILE)",
    )
    keys.add_argument(
        "--students", type=Path, required=True, help="student ids, one a line (blank lines skipped)"
    )
    keys.add_argument(
        "--out", type=Path, required=True, help="the roster to write (CSV student_id,key)"
    )
    keys.add_argument(
        "--force", action="store_true", help="replace --out if it exists (its keys stop working)"
    )
    keys.set_defaults(run=run_keys)

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--url", default=os.environ.get(URL_ENV, "http://127.0.0.1:8000"), help="the service"
    )
    client.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), help="X-API-Key")
    client.add_argument(
        "--timeout", type=positive_seconds, default=300.0, help="seconds to wait for one answer"
    )
    client.add_argument(
        "--retries",
        type=count_of("retries", 0),
        default=4,
        help="retries on connection failures and 429/503",
    )
    client.add_argument("--json", action="store_true", help="print the service's JSON answer")

    shape = commands.add_parser(
        "shape", parents=[client], help="output size of a convolution, with the worked steps"
    )
    shape.add_argument("--input-size", type=int, nargs="+", required=True, metavar="N")
    shape.add_argument("--kernel-size", type=int, nargs="+", required=True, metavar="K")
    shape.add_argument("--stride", type=int, nargs="+", default=[1], metavar="S")
    shape.add_argument("--padding", nargs="+", default=["0"], metavar="P", help="ints, valid, same")
    shape.add_argument("--dilation", type=int, nargs="+", default=[1], metavar="D")
    shape.add_argument("--in-channels", type=int)
    shape.add_argument("--out-channels", type=int)
    shape.add_argument("--transposed", action="store_true")
    shape.add_argument("--output-padding", type=int, nargs="+", default=[0], metavar="OP")
    shape.set_defaults(run=run_shape)

    check = commands.add_parser(
        "check", parents=[client], help="check answers: a JSON file of one check or {checks: [...]}"
    )
    check.add_argument("file", type=Path, help="the check(s), as POST /v1/check takes them")
    check.set_defaults(run=run_check)

    grade = commands.add_parser(
        "grade",
        parents=[client],
        help="grade a submission file, or a class (folder of .json files, or a .csv)",
    )
    grade.add_argument("submission", type=Path, help="a .json submission, a folder, or a .csv")
    grade.add_argument("--assignment", required=True, help="e.g. cnn-rnn")
    grade.add_argument("--student-id", help="the student of a single submission file")
    grade.add_argument("--gradescope", type=Path, metavar="RESULTS_JSON", help="write it there")
    # The class options default to None, so that one given with a single file is refused
    # rather than ignored (``run_grade``); their defaults are CLASS_OUT and CLASS_JOBS.
    grade.add_argument("--out", type=Path, help="class results folder (default: grades)")
    grade.add_argument(
        "--jobs", type=count_of("jobs", 1), help="class submissions graded at once (default: 4)"
    )
    grade.add_argument(
        "--regrade",
        action="store_true",
        default=None,
        help="grade every student of a class again (by default a result of the same answers "
        "to the same assignment is kept)",
    )
    grade.set_defaults(run=run_grade)
    return root


def serve_warnings(settings: Settings, workers: int) -> list[str]:
    """What the supervisor alone knows is likely not what the operator meant (the workers
    warn of the rest, ``auth.startup_warnings``): said once, before the workers start."""
    warnings = []
    storage = settings.rate_limit_storage.get_secret_value()
    if workers > 1 and settings.check_rate_limit and storage.startswith("memory://"):
        warnings.append(
            f"each of the {workers} workers counts the rate limit on its own "
            f"(TENSORGRADE_RATE_LIMIT_STORAGE={storage}), so a key gets {workers} times "
            f"TENSORGRADE_CHECK_RATE_LIMIT ({settings.check_rate_limit}), and as many times "
            "more per replica; point TENSORGRADE_RATE_LIMIT_STORAGE at one Redis to share it"
        )
    if settings.variant_secret is None:
        # The workers are handed the secret made here, so they would not say it themselves.
        warnings.append(
            "TENSORGRADE_VARIANT_SECRET is not set: student variants come from a random secret "
            f"made at start-up (shared by the {workers} worker{'s' if workers > 1 else ''} of "
            "this server); they will change at restart and differ between replicas"
        )
    return warnings


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.logs import ensure_logging, log_config
    from service.metrics import prepare_multiprocess_dir  # no torch: the supervisor has none

    settings = get_settings()
    try:
        check_environment()  # a misspelt TENSORGRADE_INSTRUCTOR_KEY must not leave it open
    except UnknownVariableError as error:
        print(f"tensorgrade: invalid configuration: {error}", file=sys.stderr)
        return 2
    try:  # here, once: each worker would fail at start-up and be restarted, forever
        open_storage(settings.rate_limit_storage.get_secret_value())
    except ValueError as error:
        print(f"tensorgrade: {error}", file=sys.stderr)
        return 2
    warnings = serve_warnings(settings, args.workers)
    with served_as(args), shared_variant_secret(settings):
        try:
            problem = check_assignments(get_settings(), args.workers)
        except RuntimeError as error:  # the check itself failed: so would every worker
            print(f"tensorgrade: {error}", file=sys.stderr)
            return 1
        if problem is not None:
            print(f"tensorgrade: invalid configuration: {problem}", file=sys.stderr)
            return 2
        if warnings:
            ensure_logging(settings.log_level)  # JSON on stderr, as every line of the service
            for warning in warnings:
                logging.getLogger("tensorgrade").warning(warning)
        try:
            prepare_multiprocess_dir()
        except ValueError as error:
            print(f"tensorgrade: invalid configuration: {error}", file=sys.stderr)
            return 2
        uvicorn.run(
            "service.app:app",
            host=args.host,
            port=args.port,
            workers=args.workers,
            # h11, never uvicorn's "auto", which takes httptools wherever it is installed: its
            # protocol in uvicorn bounds neither the headers' size (an endless header grew a
            # worker without limit) nor pipelined requests, and mishandles Upgrade requests
            # (README, "What a request goes through").
            http="h11",
            log_level=settings.log_level,
            log_config=log_config(settings.log_level),
            access_log=False,  # the service logs each request itself, as JSON with its id
            # On SIGTERM: stop accepting, let in-flight requests finish for this long.
            timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
        )
    return 0


SERVED_AS = {
    "host": "TENSORGRADE_HOST",
    "port": "TENSORGRADE_PORT",
    "workers": "TENSORGRADE_WORKERS",
}
"""The options of ``serve`` that the workers read as settings, by the variable they read."""


@contextmanager
def workers_environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in the environment the workers inherit, and read again by the settings
    here (the start-up check sees what the workers will); the environment is as it was once
    the server is done."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()


def served_as(args: argparse.Namespace) -> AbstractContextManager[None]:
    """``serve``'s ``--host``, ``--port`` and ``--workers`` as the settings of its workers: a
    worker divides the cores among ``workers`` for its torch threads, and ``--workers 4`` on
    16 cores otherwise gave each of the 4 all 16."""
    return workers_environment(
        {name: str(getattr(args, option)) for option, name in SERVED_AS.items()}
    )


def shared_variant_secret(settings: Settings) -> AbstractContextManager[None]:
    """With no ``TENSORGRADE_VARIANT_SECRET``, one random secret for every worker of this
    server, handed to them in the environment (each would otherwise make its own, and a
    student would get another variant from each: a right answer graded wrong). Never
    logged."""
    if settings.variant_secret is not None:
        return nullcontext()
    return workers_environment({VARIANT_SECRET_ENV: secrets.token_hex(32)})


def check_assignments(settings: Settings, workers: int) -> str | None:
    """Why the workers could not load the assignments, as one line; ``None`` when they can.

    Checked here, once: each worker would fail at start-up and be restarted, forever. It
    needs torch: in this process with one worker (which is this process), else in a child
    process, so that the supervisor of several workers never holds torch.

    Raises:
        RuntimeError: the child process of the check failed otherwise.
    """
    from service import preflight

    if workers == 1:
        return preflight.assignments_problem(settings)
    return preflight.assignments_problem_in_child()


def run_healthcheck(args: argparse.Namespace) -> int:
    """urllib only: the probe runs every few seconds and must stay light (no torch, no httpx)."""
    try:
        with urllib.request.urlopen(args.url, timeout=args.timeout) as response:
            status = int(response.status)
    except (urllib.error.URLError, OSError) as error:
        print(f"unhealthy: {args.url}: {error}", file=sys.stderr)
        return 1
    return 0 if status == 200 else 1


def run_keys(args: argparse.Namespace) -> int:
    """Write a roster with a fresh key per student, readable by its owner only (mode 0600)."""
    from service.roster import RosterError, read_student_ids, roster_text

    try:
        student_ids = read_student_ids(args.students)
    except RosterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # O_EXCL: never replace a roster by accident, since every key handed out would stop working.
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if args.force else os.O_EXCL)
    try:
        fd = os.open(args.out, flags, 0o600)
    except FileExistsError:
        print(f"error: {args.out} exists; pass --force to replace it", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: cannot write {args.out}: {error}", file=sys.stderr)
        return 2
    os.fchmod(fd, 0o600)  # a replaced file keeps its old mode otherwise
    with open(fd, "w", encoding="utf-8", newline="") as out:
        out.write(roster_text(student_ids))
    print(
        f"wrote {len(student_ids)} keys to {args.out}; give each student the key of their "
        f"line, and serve with TENSORGRADE_STUDENT_KEY_FILE={args.out}"
    )
    return 0


MAX_SECONDS = 86400.0
"""The longest ``--timeout``: a day. No answer is worth a longer wait, and a socket refuses a
timeout past what the platform's time_t holds (``--timeout 1e10`` was an OverflowError)."""


def positive_seconds(text: str) -> float:
    """An option's seconds: a number above 0, at most ``MAX_SECONDS`` (argparse says so,
    exit status 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds above 0 and at most {MAX_SECONDS:g}, got {text!r}"
        )
    return value


def count_of(what: str, least: int) -> Callable[[str], int]:
    """An option's count: an integer of at least ``least``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{what} must be at least {least}, got {value}")
        return value

    return parse


def _checked_url(url: str) -> None:
    """The service's URL, refused in words where it cannot be one (an httpx traceback, or
    "connection refused" for a port past 65535, before)."""
    import httpx

    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise CommandError(f"--url {url!r} is not a URL: {error}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise CommandError(f"--url {url!r}: give the service's http:// or https:// URL")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise CommandError(f"--url {url!r}: the port must be 1 to 65535, got {parsed.port}")


def _client(args: argparse.Namespace) -> Any:
    import httpx

    from service.client import Client

    _checked_url(args.url)
    timeout = httpx.Timeout(connect=5.0, read=args.timeout, write=60.0, pool=args.timeout)
    try:  # the client drops the \r\n that $(cat key) keeps of a key file saved on Windows
        return Client(args.url, args.api_key, timeout=timeout, retries=args.retries)
    except ValueError as error:  # a key no header can carry; the message never quotes it
        raise CommandError(str(error)) from None


def _calling(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the service's refusals and unreachable servers into a message and exit status 2."""

    def wrapped(args: argparse.Namespace) -> int:
        import httpx

        from service.client import ProblemError, UnsendableError
        from service.gradebook import GradingStopped, SubmissionError

        try:
            return run(args)
        except ProblemError as error:
            print(f"error: {error}", file=sys.stderr)
            for field in error.errors or []:
                where = ".".join(str(p) for p in field.get("loc", []))
                print(f"  {where}: {field.get('msg')}", file=sys.stderr)
            if error.request_id:
                print(f"  (request id {error.request_id})", file=sys.stderr)
        except httpx.HTTPError as error:
            print(f"error: {unreachable(error, args.url, args.timeout)}", file=sys.stderr)
        except (SubmissionError, GradingStopped, UnsendableError, CommandError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
        return 2

    return wrapped


def unreachable(error: Exception, url: str, timeout: float) -> str:
    """What an ``httpx.HTTPError`` says of the service, in words: not reached at all, or
    reached but too slow to answer (the remedy differs: the URL, or patience)."""
    import httpx

    from service.transport import ClosedBeforeAnswer

    if isinstance(error, httpx.ReadTimeout):
        return (
            f"the service at {url} was reached but did not answer within {timeout:g} s "
            "(--timeout): it may be busy, or the request too large; try again later, or "
            "with a longer --timeout"
        )
    if isinstance(error, httpx.WriteTimeout):
        return (
            f"the service at {url} was reached but the request could not be sent in time: "
            "it may be busy, or the request too large; try again later"
        )
    if isinstance(error, ClosedBeforeAnswer):
        return (
            f"the service at {url} was reached but closed the connection before answering "
            "(it may have restarted, or a worker stopped); try again"
        )
    if isinstance(error, httpx.WriteError):
        # A connection was made: the service (or a proxy before it) was there to close it.
        return (
            f"the service at {url} was reached but closed the connection while the request "
            "was being sent (it may have restarted); try again"
        )
    return f"cannot reach {url}: {str(error) or type(error).__name__}"


def _one_or_many(values: Sequence[int]) -> int | list[int]:
    return values[0] if len(values) == 1 else list(values)


@_calling
def run_shape(args: argparse.Namespace) -> int:
    padding: Any = args.padding[0] if args.padding[0] in ("valid", "same") else None
    if padding is not None and len(args.padding) > 1:
        print(f"error: --padding {padding} takes no other value", file=sys.stderr)
        return 2
    if padding is None:
        try:
            padding = _one_or_many([int(p) for p in args.padding])
        except ValueError:
            print("error: --padding takes ints, `valid` or `same`", file=sys.stderr)
            return 2
    with _client(args) as client:
        answer = client.conv_shape(
            args.input_size,
            _one_or_many(args.kernel_size),
            stride=_one_or_many(args.stride),
            padding=padding,
            dilation=_one_or_many(args.dilation),
            in_channels=args.in_channels,
            out_channels=args.out_channels,
            transposed=args.transposed,
            output_padding=_one_or_many(args.output_padding),
        )
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    print(f"output size {answer['output_size']}, output shape {answer['output_shape']}")
    for step in answer["steps"]:
        print(f"dimension {step['dimension']}: {step['formula']}")
        print(f"  {step['substitution']}")
    return 0


@_calling
def run_check(args: argparse.Namespace) -> int:
    """Exit status 0 when every check is correct; 2 when a check is invalid (its ``error``
    in a batch, as the same check alone is refused with a 422); else 1 (a wrong answer)."""
    body = _read_json(args.file)
    summary: Mapping[str, Any] | None = None
    with _client(args) as client:
        if "checks" in body:
            batch = client.check_batch(body["checks"])  # a list, with its summary beside
            results: list[dict[str, Any]] = list(batch)
            summary = batch.summary
            answer: Any = {"results": results, "summary": summary}
        else:
            results = [
                client.check(body["expected"], body["answer"], tolerance=body.get("tolerance"))
            ]
            answer = results[0]
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        for number, result in enumerate(results, start=1):
            print_check(number, result)
        if summary is not None and len(results) > 1:
            print(
                f"{summary.get('checks')} checks: {summary.get('correct')} correct, "
                f"{summary.get('wrong')} wrong, {summary.get('invalid')} invalid"
            )
    if any("error" in r for r in results):
        return 2
    return 0 if all(r.get("correct") for r in results) else 1


def print_check(number: int, result: Mapping[str, Any]) -> None:
    """One check's outcome: its verdict and the likely mistakes, or why it is invalid."""
    error = result.get("error")
    if error is not None:
        # A check that could not be judged: a problem detail in its place, not a verdict.
        detail = error.get("detail") if isinstance(error, dict) else error
        print(f"check {number}: INVALID: {detail}")
        for field in (error.get("errors") if isinstance(error, dict) else None) or []:
            if isinstance(field, dict) and field.get("msg"):
                where = ".".join(str(p) for p in field.get("loc", []))
                print(f"  {where}: {field['msg']}" if where else f"  {field['msg']}")
        return
    verdict = "correct" if result.get("correct") else "WRONG"
    print(f"check {number}: {verdict} (score {result.get('score')})")
    for finding in result.get("diagnosis") or []:
        # The service words each mistake as {"code", "message"}.
        print(f"  - {finding.get('message') if isinstance(finding, dict) else finding}")


def _read_json(path: Path) -> dict[str, Any]:
    from service.gradebook import SubmissionError

    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
        # A byte-order mark (Windows editors write one) is no part of the JSON, piped or not.
        data = json.loads(text.removeprefix("\ufeff"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SubmissionError(f"{path}: cannot read JSON: {error}") from None
    if not isinstance(data, dict) or not ("checks" in data or {"expected", "answer"} <= set(data)):
        raise SubmissionError(f'{path}: a check is {{"expected", "answer"}} or {{"checks": [...]}}')
    checks = data.get("checks")
    if "checks" in data and not (
        isinstance(checks, list) and all(isinstance(c, dict) for c in checks)
    ):
        raise SubmissionError(f'{path}: "checks" is a list of {{"expected", "answer"}} objects')
    if "checks" not in data and not isinstance(data["expected"], dict):
        raise SubmissionError(f'{path}: "expected" is an object (the key: {{"op": ...}})')
    if data.get("tolerance") is not None and not isinstance(data["tolerance"], dict):
        raise SubmissionError(f'{path}: "tolerance" is an object ({{"rtol", "atol"}})')
    return data


@_calling
def run_grade(args: argparse.Namespace) -> int:
    from service import gradebook

    if args.submission.is_dir() or args.submission.suffix.lower() == ".csv":
        given = [flag for flag, value in SINGLE_FLAGS.items() if getattr(args, value) is not None]
        given += ["--json"] if args.json else []  # a class's answers are its result files
        if given:
            raise CommandError(
                f"{' and '.join(given)}: for one submission file; a class ({args.submission}) "
                "writes each student's result to --out, named by its id"
            )
        return _grade_class(args)
    given = [flag for flag, value in CLASS_FLAGS.items() if getattr(args, value) is not None]
    if given:
        raise CommandError(
            f"{' and '.join(given)}: for a class (a folder or a .csv); for one submission "
            "file, --gradescope names the result's file"
        )
    if args.gradescope:
        gradebook.refuse_overwrite(args.gradescope, args.submission)
    submission = gradebook.read_submission(args.submission, args.student_id)
    with _client(args) as client:
        result = gradebook.grade_submission(
            client, args.assignment, submission.student_id, submission.answers
        )
    if args.gradescope:
        gradebook.write_json(args.gradescope, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_summary(args.assignment, submission.student_id, result)
    return 0


SINGLE_FLAGS = {"--student-id": "student_id", "--gradescope": "gradescope"}
"""The options of ``grade`` for one submission file, by the attribute argparse gives them."""
CLASS_FLAGS = {"--out": "out", "--jobs": "jobs", "--regrade": "regrade"}
"""The options of ``grade`` for a class; None when not given (their defaults are applied by
``_grade_class``)."""
CLASS_OUT = Path("grades")
CLASS_JOBS = 4


def print_summary(assignment: str, student_id: str, result: dict[str, Any]) -> None:
    """A Gradescope result as a few lines: the total, then each problem's score."""
    from service.gradebook import problem_key

    tests = result.get("tests") or []
    total = sum(t.get("max_score", 0) for t in tests)
    print(f"{assignment}, student {student_id}: {result.get('score')} / {total}")
    for test in tests:
        output = (test.get("output") or "").strip().splitlines()
        note = f"  {output[0]}" if output else ""
        print(f"  {problem_key(test):<16} {test.get('score')} / {test.get('max_score')}{note}")


def _listed(client: Any, assignment: str) -> dict[str, Any]:
    """``assignment`` as the service lists it: its problems (id, title, points...) and its
    ``revision``.

    Raises:
        SubmissionError: the service has no such assignment (nobody is graded, nothing kept
            from an earlier run is taken for it).
    """
    from service.gradebook import SubmissionError

    listed = {a["id"]: a for a in client.assignments()}
    if assignment not in listed:
        known = ", ".join(sorted(listed)) or "none"
        raise SubmissionError(f"the service has no assignment {assignment!r}; it has {known}")
    found: dict[str, Any] = listed[assignment]
    problems = found.get("problems")
    if not isinstance(problems, list) or not all(
        isinstance(p, dict) and "id" in p for p in problems
    ):
        # Something in the service's place, or a service of another version: nothing to
        # grade against (a KeyError traceback, before).
        raise SubmissionError(
            f"the service's listing of {assignment!r} has no problems with ids; check --url"
        )
    return found


def _grade_class(args: argparse.Namespace) -> int:
    from service import gradebook

    out: Path = args.out if args.out is not None else CLASS_OUT
    jobs: int = args.jobs if args.jobs is not None else CLASS_JOBS
    gradebook.refuse_overwrite(out, args.submission)
    submissions = gradebook.read_class(args.submission)
    interrupted = False
    report = gradebook.ClassReport()
    students = [s.student_id for s in submissions]
    answers = {s.student_id: s.answers for s in submissions}
    revision: str | None = None

    def current(student: str, result: Mapping[str, Any]) -> bool:
        return gradebook.graded_before(result, args.assignment, student, answers[student], revision)

    with _client(args) as client:
        listed = _listed(client, args.assignment)
        # A service older than `revision` lists none: results are then kept as before.
        revision = listed["revision"] if isinstance(listed.get("revision"), str) else None
        problems = [str(p["id"]) for p in listed["problems"]]
        points = sum(float(p.get("points", 0)) for p in listed["problems"])
        if args.submission.suffix.lower() == ".csv":
            gradebook.unknown_columns(args.submission, submissions, problems)
        try:
            gradebook.grade_class(
                client,
                args.assignment,
                submissions,
                out,
                jobs=jobs,
                problems=problems,
                regrade=bool(args.regrade),
                report=report,
                revision=revision,
            )
        except KeyboardInterrupt:
            interrupted = True
        except gradebook.GradingStopped:
            gradebook.write_gradebook(out, students, report.failed, points, current)
            raise
    # Written even after an interrupt: the gradebook of whoever is graded so far.
    path = gradebook.write_gradebook(out, students, report.failed, points, current)
    if interrupted:
        print(f"interrupted; gradebook so far: {path}. Run the same command to resume.")
        if report.abandoned:
            # A second Ctrl-C left requests on their way (up to --timeout each): their
            # threads would hold the exit. Everything kept is written, atomically.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return 130
    print(
        f"{len(report.graded)} graded, {len(report.resumed)} already graded, "
        f"{len(report.failed)} failed; results in {out}, gradebook {path}"
    )
    if report.regraded:
        print(
            f"  {len(report.regraded)} graded again because the assignment changed since their "
            "result (its answer key, a tolerance or the variant secret: its revision differs)"
        )
    for student, reason in sorted(report.failed.items()):
        print(f"  not graded: {student}: {reason}", file=sys.stderr)
    if report.failed:
        print("run the same command again to grade the rest", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
