"""What ``--help`` says beyond the flags: a description and examples for every (sub)command.

Kept apart from the parser so the texts read as one page; ``decorate`` hangs
them on the parser's subcommands after they are built, and a test walks every
subcommand (and parses every example) so a new one cannot ship without them.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Iterator

Path = tuple[str, ...]
WIDTH = 88

HELP: dict[Path, tuple[str, tuple[str, ...]]] = {
    ("check",): (
        "Validate config files and print them as watchdogd understood them: each service's rules, "
        "rollback steps and notification targets. Every problem is named with its file, line and field. "
        "Exit 0 valid, 1 --live found a rollback rule that cannot see, 2 a config problem.",
        (
            "watchdogd check -c /etc/watchdogd/watchdogd.yaml",
            "watchdogd check -c watchdogd.yaml --json | jq '.files[].problems'",
            "watchdogd check -c /etc/watchdogd/watchdogd.yaml --live",
        ),
    ),
    ("init",): (
        "Write a starter config and a tokens file with fresh operator and viewer tokens (printed once, "
        "kept only as hashes). Refuses to overwrite existing files.",
        ("watchdogd init /etc/watchdogd",),
    ),
    ("demo",): (
        "Deploy a service with a bad release on this machine's Docker engine, watch watchdogd notice and "
        "roll back its container and SQL migration, then clean up.",
        ("watchdogd demo", "watchdogd demo --keep"),
    ),
    ("run",): (
        "Run the daemon: watch the configured services, propose and execute rollbacks, serve the API and "
        "the operator page. SIGHUP reloads the config (a bad one keeps the running config); SIGTERM "
        "stops after in-flight work.",
        ("watchdogd run -c /etc/watchdogd/watchdogd.yaml",),
    ),
    ("schema",): (
        "Print the JSON Schema of the config file (for editors and CI), or the config reference as Markdown.",
        (
            "watchdogd schema > watchdogd.schema.json",
            "watchdogd schema --markdown > docs/config.md",
        ),
    ),
    ("test-rules",): (
        "Run offline rule tests: series written in promtool notation fed to the rules of a config, with "
        "the states and proposals expected at given times. Exit 0 all passed, 1 a test failed, 2 a file "
        "is wrong.",
        (
            "watchdogd test-rules config/examples/tests/*.test.yaml",
            "watchdogd test-rules -k 'error rate' --junit rule-tests.xml rules.test.yaml",
        ),
    ),
    ("replay",): (
        "Evaluate one rule over a recorded series (a CSV or JSON file, or a range query on Prometheus) "
        "and show when it would have fired and proposed a rollback. A sequential or latency rule "
        "without --deploy-at: a deploy every --every over the history, and how many would have been "
        "rolled back.",
        (
            "watchdogd replay -c watchdogd.yaml --rule api/error-rate --series incident.csv",
            "watchdogd replay -c watchdogd.yaml --rule error-rate --prometheus "
            "--start 2024-05-01T10:00:00Z --end 2024-05-01T11:00:00Z",
            "watchdogd replay -c watchdogd.yaml --rule api/slow --prometheus "
            "--start 2024-05-01T00:00:00Z --end 2024-05-08T00:00:00Z --step 1m --every 2h",
        ),
    ),
    ("completion",): (
        "Print a shell completion script for watchdogd, generated from its own command line.",
        (
            "watchdogd completion bash > /etc/bash_completion.d/watchdogd",
            'watchdogd completion zsh > "${fpath[1]}/_watchdogd"',
        ),
    ),
    ("ctl",): (
        "Client of a running watchdogd's API. The URL and token come from --url and --token, or "
        "WATCHDOGD_URL and WATCHDOGD_TOKEN. Exit 0 ok, 1 refused by the API, 2 usage or connection.",
        (
            "WATCHDOGD_TOKEN=$(cat /run/secrets/watchdogd-operator) watchdogd ctl status",
            "watchdogd ctl --url http://127.0.0.1:9464 --json status",
        ),
    ),
    ("ctl", "status"): (
        "Show open and recent deployments, each rule's state and the rollback proposals with their "
        "countdown.",
        ("watchdogd ctl status", "watchdogd ctl status --all --json"),
    ),
    ("ctl", "deploy"): (
        "Register a deployment to watch, with the image it brought, the one it replaced and the "
        "migration the sql step would undo, or the backup (watchdogd ctl backup) the restore step would "
        "put back. Usually called by the deploy pipeline.",
        (
            "watchdogd ctl deploy --service api --image registry.example.com/api:v2 "
            "--previous-image registry.example.com/api:v1 --migration-id 0042_add_index --window 2h",
            "watchdogd ctl deploy --service api --image registry.example.com/api:v2 "
            "--backup-id api-20260105T020000Z-3f2a1c",
        ),
    ),
    ("ctl", "ack"): (
        "Acknowledge a rollback proposal: you have seen it; it still proceeds at the end of its grace.",
        ("watchdogd ctl ack rb-3f2a",),
    ),
    ("ctl", "veto"): (
        "Cancel a pending rollback proposal, with a reason for the audit; --mute-for keeps the rules that "
        "fired from proposing again for a while.",
        ("watchdogd ctl veto rb-3f2a --reason 'known upstream blip' --mute-for 30m",),
    ),
    ("ctl", "approve"): (
        "Execute a rollback proposal now (in manual mode, or one waiting for approval).",
        ("watchdogd ctl approve rb-3f2a",),
    ),
    ("ctl", "retry"): (
        "Run a failed rollback again from its journal: the steps already done are not run twice.",
        ("watchdogd ctl retry rb-3f2a",),
    ),
    ("ctl", "rollback"): (
        "Propose rolling a deployment back by hand, with a reason; it then follows the service's mode.",
        ("watchdogd ctl rollback d-81c0 --reason 'checkout errors reported by support'",),
    ),
    ("ctl", "freeze"): (
        "Refuse new deployments of a service for a while (POST /v1/deployments answers 409 frozen).",
        ("watchdogd ctl freeze api --for 2h --reason 'incident 4711 under investigation'",),
    ),
    ("ctl", "unfreeze"): ("Lift a service's deploy freeze.", ("watchdogd ctl unfreeze api",)),
    ("ctl", "backup"): (
        "Back up a service's database now (pg_dump -Fc into watchdogd's backups directory) and print "
        "the backup's id, size, SHA-256 and every table's rows. A pipeline calls it just before it "
        "migrates and registers the deploy with --backup-id, so the restore step can put the database "
        "back as it was.",
        (
            "watchdogd ctl backup api",
            "BACKUP=$(watchdogd ctl backup api --quiet) && watchdogd ctl deploy --service api --image app:v2 "
            '--backup-id "$BACKUP"',
        ),
    ),
    ("ctl", "backups"): (
        "List a service's database backups, newest first, with their size and rows.",
        ("watchdogd ctl backups api", "watchdogd ctl backups api --json"),
    ),
    ("ctl", "promote"): (
        "End a deployment's window now and mark it healthy; no rollback is proposed for it afterwards.",
        ("watchdogd ctl promote d-81c0",),
    ),
    ("ctl", "rehearse"): (
        "Run a deployment's down SQL in a transaction and roll it back, to see that it would work.",
        ("watchdogd ctl rehearse d-81c0",),
    ),
    ("ctl", "events"): (
        "Follow the event stream (rule states, proposals, rollbacks); reconnects where it left off.",
        ("watchdogd ctl events", "watchdogd ctl events --count 10 --json"),
    ),
    ("ctl", "audit"): (
        "Show who did what when: deployments registered, votes, rollbacks, freezes.",
        ("watchdogd ctl audit --since 24h", "watchdogd ctl audit --deployment d-81c0 --actor alice"),
    ),
}
"""Each command's description and examples (each example a full command line)."""


def subcommands(
    parser: argparse.ArgumentParser, path: Path = ()
) -> Iterator[tuple[Path, argparse.ArgumentParser]]:
    """Every subcommand parser under ``parser``, with its path of names."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from subcommands(sub, (*path, name))


def decorate(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Hang each subcommand's description and examples on it (one left bare fails a test)."""
    for path, sub in subcommands(parser):
        known = HELP.get(path)
        if known is None:
            continue
        description, examples = known
        sub.description = textwrap.fill(description, WIDTH)
        sub.epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
        sub.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser
