"""The config: models, value types, loading with line-numbered errors."""

from watchdogd.config.describe import describe_config, describe_rule
from watchdogd.config.loader import load_config, load_config_text
from watchdogd.config.models import (
    Config,
    DatabaseConfig,
    DefaultsConfig,
    RuleConfig,
    ServiceConfig,
    SourceConfig,
)
from watchdogd.config.schema import config_json_schema
from watchdogd.config.types import Condition, SecretUrl, format_duration, parse_duration

__all__ = [
    "Condition",
    "Config",
    "DatabaseConfig",
    "DefaultsConfig",
    "RuleConfig",
    "SecretUrl",
    "ServiceConfig",
    "SourceConfig",
    "config_json_schema",
    "describe_config",
    "describe_rule",
    "format_duration",
    "load_config",
    "load_config_text",
    "parse_duration",
]
