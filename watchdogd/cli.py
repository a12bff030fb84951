"""The ``watchdogd`` command: parsing and printing, no logic of its own."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from watchdogd import __version__, ctl
from watchdogd.clihelp import decorate
from watchdogd.config import describe_config, format_duration, load_config, parse_duration
from watchdogd.config.models import Config
from watchdogd.errors import ConfigError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

Command = Callable[[argparse.Namespace], int]


def _check(args: argparse.Namespace) -> int:
    from watchdogd.preflight import check_files, check_tokens, warnings

    status = EXIT_OK
    report: list[dict[str, Any]] = []
    for path in args.config:
        entry: dict[str, Any] = {"path": str(path), "valid": False, "problems": [], "warnings": []}
        report.append(entry)
        try:
            config = load_config(path)
            # the files are the host's: read where it runs (--live), not where the config is written
            problems = check_files(config, str(path)) if args.live else check_tokens(config)
            if problems:
                raise ConfigError(problems)
        except ConfigError as exc:
            entry["problems"] = [dataclasses.asdict(p) for p in exc.problems]
            if not args.json:
                print(exc, file=sys.stderr)
            status = EXIT_CONFIG
            continue
        entry["valid"] = True
        entry["warnings"] = warnings(config, str(path))
        entry["summary"] = describe_config(config)
        if not args.json:
            print(f"{path}: valid")
            for warning in entry["warnings"]:
                print(warning, file=sys.stderr)
            if not args.quiet:
                for line in entry["summary"]:
                    print(f"  {line}")
        if args.live:
            live_status, entry["live"] = _check_live(config, quiet_output=args.json)
            if live_status != EXIT_OK:
                status = max(status, EXIT_FAILED)
    if args.json:
        document = {"valid": status == EXIT_OK, "exit_code": status, "files": report}
        print(json.dumps(document, indent=2))
    return status


def _check_live(config: Config, quiet_output: bool = False) -> tuple[int, dict[str, Any]]:
    """One poll of every source; EXIT_FAILED when a rollback rule cannot see. Prints unless told not to."""
    import asyncio
    import logging

    import structlog

    from watchdogd.preflight import check_databases, check_live
    from watchdogd.telemetry import configure_logging

    saved = structlog.get_config()
    configure_logging(logging.ERROR, "console", stream=sys.stderr)  # each rule's line says it all
    try:
        seen = asyncio.run(check_live(config))
        databases = asyncio.run(check_databases(config))
    finally:
        structlog.configure(**saved)  # the caller's logging as it was
    out: list[tuple[str, bool]] = [("  live:", False)]
    out += [(f"    {rule.line}", False) for rule in seen]
    out += [(f"    {database.line}", False) for database in databases]
    status = EXIT_OK
    blind = [s for s in seen if s.verdict == "blind" and s.action == "rollback"]
    if blind:
        names = ", ".join(f"{s.service}/{s.rule}" for s in blind)
        out.append((f"  {len(blind)} rollback rule(s) cannot see: {names}", True))
        status = EXIT_FAILED
    refused = [d.service for d in databases if d.refused]
    if refused:
        out.append((f"  the sql step cannot run for: {', '.join(refused)}", True))
        status = EXIT_FAILED
    if not quiet_output:
        for line, problem in out:
            print(line, file=sys.stderr if problem else sys.stdout)
    data = {
        "ok": status == EXIT_OK,
        "rules": [
            {"service": s.service, "rule": s.rule, "action": s.action, "verdict": s.verdict, "line": s.line}
            for s in seen
        ],
        "databases": [{"service": d.service, "refused": d.refused, "line": d.line} for d in databases],
        "blind": [f"{s.service}/{s.rule}" for s in blind],
        "sql_refused": refused,
    }
    return status, data


def _run(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from watchdogd.errors import StoreError
    from watchdogd.runner import serve
    from watchdogd.telemetry import configure_logging, resolve_level

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(resolve_level(config.logging.level, dict(os.environ)), config.logging.format)
    try:
        return asyncio.run(serve(config, Path(args.config)))
    except ConfigError as exc:
        # the tokens file, the TLS files, the listen address: it never started
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as exc:
        # the state store could not be opened: nothing ran
        print(f"watchdogd run: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from watchdogd.init import InitRefused, new_tokens, summary, write_starter

    try:
        written = write_starter(Path(args.directory), new_tokens())
    except InitRefused as exc:
        print(f"watchdogd init: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for line in summary(written):
        print(line)
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    import asyncio

    from watchdogd.demo.story import run_demo

    return asyncio.run(run_demo(keep=args.keep))


def _schema(args: argparse.Namespace) -> int:
    if args.markdown:
        from watchdogd.config.reference import render_markdown

        sys.stdout.write(render_markdown())
        return EXIT_OK
    from watchdogd.config.schema import render

    sys.stdout.write(render())
    return EXIT_OK


def _test_rules(args: argparse.Namespace) -> int:
    from watchdogd.junit import FileResult, render
    from watchdogd.ruletests import run_file

    status = EXIT_OK
    passed = failed = 0
    results: list[FileResult] = []
    for path in args.files:
        try:
            outcomes = run_file(path, args.k)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            results.append(FileResult(str(path), error=str(exc)))
            status = EXIT_CONFIG
            continue
        results.append(FileResult(str(path), outcomes))
        for outcome in outcomes:
            if outcome.passed:
                passed += 1
                if args.verbose:
                    print(f"PASS {path}: {outcome.name}")
                continue
            failed += 1
            print(f"FAIL {path}: {outcome.name}")
            for block in outcome.failures:
                for number, line in enumerate(block):
                    print(f"  {line}" if number == 0 else f"    {line}")
    print(f"{passed} passed, {failed} failed" + (f" (selected by -k {args.k!r})" if args.k else ""))
    if args.junit is not None:
        try:
            args.junit.write_text(render(results), encoding="utf-8")
        except OSError as exc:
            print(f"watchdogd test-rules: cannot write {args.junit}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_CONFIG
    if args.k and passed + failed == 0 and status == EXIT_OK:
        # a filter that selects nothing tests nothing: CI must not go green on a typo
        print(f"no test matches -k {args.k!r}", file=sys.stderr)
        return EXIT_FAILED
    if status == EXIT_OK and failed:
        status = EXIT_FAILED
    return status


def _completion(args: argparse.Namespace) -> int:
    from watchdogd.completion import script

    sys.stdout.write(script(build_parser(), args.shell))
    return EXIT_OK


def _replay(args: argparse.Namespace) -> int:
    from watchdogd.config.models import PrometheusSource
    from watchdogd.errors import RuleError, WatchdogError
    from watchdogd.replay import (
        describe_replay,
        find_rule,
        grace_of,
        interval_of,
        on_ticks,
        query_range,
        read_series_file,
        replay_rule,
    )
    from watchdogd.rules import compile_rule

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    try:
        service_name, service, rule_config = find_rule(config, args.rule)
        if rule_config.sequential is not None or rule_config.latency is not None:
            from watchdogd.replay_counts import replay_sequential
            from watchdogd.replay_latency import replay_latency

            learns = replay_sequential if rule_config.sequential is not None else replay_latency
            print("\n".join(learns(config, service_name, service, rule_config, args)))
            return EXIT_OK
        rule = compile_rule(rule_config)
        step = args.step if args.step is not None else interval_of(config, service)
        if args.series is not None:
            points = read_series_file(args.series)
        else:
            source = config.sources.get(rule_config.source)
            if not isinstance(source, PrometheusSource) or rule_config.query is None:
                raise WatchdogError(
                    f"rule '{rule.name}' does not read a prometheus source: use --series FILE"
                )
            if args.start is None or args.end is None:
                raise WatchdogError("--prometheus needs --start and --end")
            url = args.prometheus or source.url.secret()
            points = query_range(
                url, rule_config.query, args.start, args.end, step, source.aggregation, source.timeout
            )
        if not points:
            raise WatchdogError("the series has no points")
        first = min(at for at, _ in points)
        last = max(at for at, _ in points)
        deploy_at = args.deploy_at if args.deploy_at is not None else first
        samples = on_ticks(points, first, last, step)
        replay = replay_rule(rule, samples, deploy_at)
    except (WatchdogError, RuleError) as exc:
        print(f"watchdogd replay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"rule {service_name}/{rule.name}, one evaluation every {format_duration(step)}")
    for line in describe_replay(replay, grace_of(config, service_name, rule_config), clock=args.clock):
        print(line)
    return EXIT_OK


def _time_arg(text: str) -> float:
    from watchdogd.replay import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration_arg(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="watchdogd",
        description="Guards a fresh deploy and rolls it back, container and SQL, when its rules say so.",
    )
    parser.add_argument("--version", action="version", version=f"watchdogd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check", help="validate config files and print them as understood")
    check.add_argument(
        "--config",
        "-c",
        action="append",
        required=True,
        metavar="PATH",
        help="config file (repeat for several)",
    )
    check.add_argument("--quiet", "-q", action="store_true", help="only say whether each file is valid")
    check.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document: each file's validity, problems (file, line, field, message),"
        " warnings, summary and --live results",
    )
    check.add_argument(
        "--live",
        action="store_true",
        help="on the host it runs on: read the files the config names, poll each source once and"
        " evaluate each rule; exit 1 when a rollback rule cannot see",
    )
    check.set_defaults(handler=_check)

    init = commands.add_parser(
        "init", help="write a starter config and a tokens file (the tokens are printed once)"
    )
    init.add_argument(
        "directory", nargs="?", default=".", metavar="DIR", help="where to write them (default: here)"
    )
    init.set_defaults(handler=_init)

    demo = commands.add_parser("demo", help="a bad deploy rolled back, container and SQL, on this machine")
    demo.add_argument("--keep", action="store_true", help="leave it all running to look around")
    demo.set_defaults(handler=_demo)

    run = commands.add_parser("run", help="guard the configured services (the daemon)")
    run.add_argument("--config", "-c", required=True, metavar="PATH", help="config file")
    run.set_defaults(handler=_run)

    schema = commands.add_parser("schema", help="print the JSON Schema of the config")
    schema.add_argument(
        "--markdown", action="store_true", help="the config reference (docs/config.md) instead"
    )
    schema.set_defaults(handler=_schema)

    test_rules = commands.add_parser("test-rules", help="run offline rule tests (series and expectations)")
    test_rules.add_argument("files", nargs="+", metavar="FILE", help="rule test file")
    test_rules.add_argument("--verbose", "-v", action="store_true", help="list passing tests too")
    test_rules.add_argument(
        "-k",
        metavar="PATTERN",
        help="run only the tests whose name contains PATTERN, or matches it as a glob (*, ?, [...]);"
        " case ignored",
    )
    test_rules.add_argument(
        "--junit", type=pathlib.Path, metavar="FILE", help="also write a JUnit XML report to FILE (for CI)"
    )
    test_rules.set_defaults(handler=_test_rules)

    replay = commands.add_parser("replay", help="evaluate a rule over a recorded series")
    replay.add_argument("--config", "-c", required=True, metavar="PATH", help="config file")
    replay.add_argument("--rule", required=True, metavar="NAME", help="rule name, or SERVICE/NAME")
    where = replay.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--series",
        metavar="FILE",
        help="CSV (timestamp,value; a sequential rule: timestamp,errors,total; a latency rule:"
        " timestamp,le,count) or JSON",
    )
    where.add_argument(
        "--prometheus",
        nargs="?",
        const="",
        metavar="URL",
        help="range query on a Prometheus server (default: the rule's source URL)",
    )
    replay.add_argument("--start", type=_time_arg, metavar="T", help="Unix seconds or RFC 3339")
    replay.add_argument("--end", type=_time_arg, metavar="T", help="Unix seconds or RFC 3339")
    replay.add_argument(
        "--step", type=_duration_arg, metavar="DURATION", help="evaluation interval (default: the service's)"
    )
    replay.add_argument(
        "--deploy-at",
        type=_time_arg,
        metavar="T",
        help="when the deploy happened; earlier points only make baselines (default: the first point)",
    )
    replay.add_argument("--clock", action="store_true", help="print UTC times instead of offsets")
    replay.add_argument(
        "--every",
        type=_duration_arg,
        metavar="DURATION",
        help="a sequential or latency rule without --deploy-at: a deploy every DURATION over the history"
        " (default: its watch window), how many would have been rolled back",
    )
    replay.set_defaults(handler=_replay)

    completion = commands.add_parser("completion", help="print a shell completion script (bash or zsh)")
    completion.add_argument("shell", choices=("bash", "zsh"), help="the shell")
    completion.set_defaults(handler=_completion)

    ctl.add_parser(commands)
    return decorate(parser)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Command = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
