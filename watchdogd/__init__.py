"""watchdogd: guards the hours after a deploy and rolls a bad one back."""

__version__ = "0.1.0"
