"""What each kind of notification target is sent: the vendors' bodies and the template variables."""

from watchdogd.notifiers.bodies import Outgoing, outgoing, variables

__all__ = ["Outgoing", "outgoing", "variables"]
