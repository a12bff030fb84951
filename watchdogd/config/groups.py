"""Checks of ``groups``: members that exist, each in one group, an ``order`` that lists each once."""

from __future__ import annotations

from watchdogd.config.models import Config

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]


def check_groups(config: Config) -> list[Problem]:
    problems: list[Problem] = []
    member_of: dict[str, str] = {}
    for name, group in config.groups.items():
        base: Loc = ("groups", name)
        seen: set[str] = set()
        for index, service in enumerate(group.services):
            loc: Loc = (*base, "services", index)
            if service not in config.services:
                known = ", ".join(config.services) or "none"
                problems.append((loc, f"no service '{service}' in the config (services: {known})"))
            elif service in seen:
                problems.append((loc, f"'{service}' is listed twice"))
            elif service in member_of:
                problems.append(
                    (
                        loc,
                        f"'{service}' is already in group '{member_of[service]}' (a service is in one group)",
                    )
                )
            seen.add(service)
            member_of.setdefault(service, name)
        if group.order is not None and sorted(group.order) != sorted(group.services):
            missing = sorted(set(group.services) - set(group.order))
            extra = sorted(set(group.order) - set(group.services))
            twice = sorted({s for s in group.order if group.order.count(s) > 1})
            said = [f"missing {', '.join(missing)}"] if missing else []
            said += [f"not in services: {', '.join(extra)}"] if extra else []
            said += [f"listed twice: {', '.join(twice)}"] if twice else []
            message = "must list every service of the group once: " + "; ".join(said)
            problems.append(((*base, "order"), message))
    return problems
