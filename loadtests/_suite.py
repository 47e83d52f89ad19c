"""What the locustfiles share: their command-line options, which user classes run, and the
verdict at the end of a run.

- Options (`locust -f loadtests/ --help` lists them under "selserve"): where the static tree
  and the WSGI app are mounted, the server's header timeout (the slowloris check needs it),
  and where to write the JSON summary that `loadtests/run.py` reads.
- Selection: Locust's `--tags` only filters tasks, and without `--tags` it runs every
  task.  Classes that need a server set up for them (static files, WSGI) are therefore
  opt-in: they run only when one of their tags is asked for (or their class is named on
  the command line), and a class left without tasks by `--tags` is dropped instead of
  failing at start.
- Verdict: requests of type MISBEHAVE come from the misbehaving users and are kept apart;
  everything else is a well-behaved request.  At exit the summary says, for both groups,
  how many requests failed and the percentiles, and the well-behaved group alone decides
  whether the server passed.

Imported once per Locust process (as module `_suite`), so each listener is added once.
"""

from __future__ import annotations

import json
import logging
import time

from locust import events
from locust.runners import WorkerRunner
from locust.stats import StatsEntry

log = logging.getLogger("loadtests")

# The request type the misbehaving users report under.
MISBEHAVE = "MISBEHAVE"
# Percentiles in the summary.
PERCENTILES = (0.5, 0.95, 0.99)


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    group = parser.add_argument_group("selserve", "options of the selserve load tests")
    group.add_argument(
        "--static-prefix",
        default="/static",
        help="URL prefix the static tree is served under ('' when it is --root). Default: /static",
    )
    group.add_argument(
        "--wsgi-prefix",
        default="/wsgi",
        help="URL prefix of the load-test WSGI app ('' when it is the served APP). Default: /wsgi",
    )
    group.add_argument(
        "--server-header-timeout",
        type=float,
        default=10.0,
        help="the server's --header-timeout: a slowloris must be dropped within it "
        "(plus slack). Default: 10 (selserve's default)",
    )
    group.add_argument(
        "--summary-json",
        default="",
        help="write the run's summary (well-behaved vs misbehaving) to this JSON file",
    )


def option(environment, name: str, default=None):
    options = environment.parsed_options
    return getattr(options, name, default) if options is not None else default


# --------------------------------------------------------------------------- selection


def _task_tag_sets(user_class) -> list[set[str]]:
    """The tag set of every task function of `user_class` (tasks of TaskSets included)."""
    found = []
    frontier = list(user_class.tasks)
    while frontier:
        task = frontier.pop()
        if hasattr(task, "tasks"):
            frontier.extend(task.tasks)
        else:
            found.append(set(getattr(task, "locust_tag_set", ())))
    return found


def selected(user_class, tags, exclude_tags) -> bool:
    """Whether `user_class` runs for these --tags / --exclude-tags."""
    if not tags and getattr(user_class, "opt_in", False):
        return False
    for task_tags in _task_tag_sets(user_class):
        if tags and not task_tags & set(tags):
            continue
        if exclude_tags and task_tags & set(exclude_tags):
            continue
        return True
    return False


@events.init.add_listener
def select_user_classes(environment, **_kwargs) -> None:
    if option(environment, "user_classes"):
        return  # classes named on the command line run as asked
    tags = option(environment, "tags")
    exclude_tags = option(environment, "exclude_tags")
    keep = [c for c in environment.user_classes if selected(c, tags, exclude_tags)]
    dropped = sorted(c.__name__ for c in environment.user_classes if c not in keep)
    if dropped:
        log.info("not running %s (opt-in, or no task matches the tags)", ", ".join(dropped))
    if not keep:
        log.error("no user class matches --tags %s --exclude-tags %s", tags, exclude_tags)
    environment.user_classes[:] = keep


# --------------------------------------------------------------------------- verdict


def _entry_summary(entry: StatsEntry) -> dict:
    summary = {
        "type": entry.method,
        "name": entry.name,
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "rps": round(entry.total_rps, 2),
        "avg_ms": round(entry.avg_response_time, 1),
        "max_ms": round(entry.max_response_time or 0, 1),
    }
    for p in PERCENTILES:
        value = entry.get_response_time_percentile(p) if entry.num_requests else 0
        summary[f"p{round(p * 100)}_ms"] = value
    return summary


def summarise(environment) -> dict:
    stats = environment.stats
    groups = {
        "well_behaved": StatsEntry(stats, "well-behaved", ""),
        "misbehaving": StatsEntry(stats, "misbehaving", MISBEHAVE),
    }
    entries = []
    for entry in sorted(stats.entries.values(), key=lambda e: (e.method, e.name)):
        group = "misbehaving" if entry.method == MISBEHAVE else "well_behaved"
        groups[group].extend(entry)
        entries.append({**_entry_summary(entry), "group": group})
    errors = [
        {
            "type": error.method,
            "name": error.name,
            "error": str(error.error),
            "occurrences": error.occurrences,
            "group": "misbehaving" if error.method == MISBEHAVE else "well_behaved",
        }
        for error in stats.errors.values()
    ]
    runner = environment.runner
    exceptions = [
        {"count": e["count"], "msg": e["msg"], "nodes": sorted(e["nodes"])}
        for e in (runner.exceptions.values() if runner is not None else ())
    ]
    duration = (stats.last_request_timestamp or time.time()) - stats.start_time
    return {
        "host": environment.host,
        "user_classes": sorted(c.__name__ for c in environment.user_classes),
        "duration_s": round(max(duration, 0.0), 2),
        "groups": {name: _entry_summary(entry) for name, entry in groups.items()},
        "entries": entries,
        "errors": errors,
        "exceptions": exceptions,
    }


@events.quitting.add_listener
def write_summary(environment, **_kwargs) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return  # the master (or the local runner) holds the whole run's numbers
    summary = summarise(environment)
    well = summary["groups"]["well_behaved"]
    bad = summary["groups"]["misbehaving"]
    log.info(
        "well-behaved: %d requests, %d failed; misbehaving: %d checks, %d failed; "
        "%d exceptions in user code",
        well["requests"],
        well["failures"],
        bad["requests"],
        bad["failures"],
        sum(e["count"] for e in summary["exceptions"]),
    )
    path = option(environment, "summary_json")
    if path:
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)


# --------------------------------------------------------------------------- checks


def verdict(response, ok: bool, why) -> bool:
    """Mark a `catch_response=True` response as a success or, with `why` (a str, or a
    callable making one, for messages too costly to build on every success), a failure."""
    if ok:
        response.success()
    else:
        response.failure(why() if callable(why) else why)
    return ok


def exchange(environment, request_type: str, name: str, action) -> None:
    """Run `action()` (a raw-socket exchange returning how many bytes it received) and
    report it to Locust as one request: a failure if it raised, timed from start to end."""
    start = time.perf_counter()
    error = None
    length = 0
    try:
        length = action() or 0
    except Exception as exc:  # any failure of the exchange is its result
        error = exc
    environment.events.request.fire(
        request_type=request_type,
        name=name,
        response_time=(time.perf_counter() - start) * 1000,
        response_length=length,
        exception=error,
        context={},
    )


def describe(response) -> str:
    """A short description of what came back, for failure messages."""
    content = response.content or b""
    return f"status {response.status_code}, {len(content)} body bytes ({content[:60]!r})"
