"""Shared data shapes of trainguard: findings, reports, rules, config, errors, renderers.

    >>> from trainguard.core import Severity
    >>> Severity.parse("high") > Severity.MEDIUM
    True
"""

from trainguard.core.config import Config, Limits, ScanConfig, load_config
from trainguard.core.errors import (
    ConfigError,
    InputError,
    LimitExceeded,
    MalformedInput,
    TrainguardError,
    UsageError,
)
from trainguard.core.findings import Finding, Location, Severity
from trainguard.core.report import ExitCode, FileResult, FileStatus, Report
from trainguard.core.rules import RULES, Rule, rule

__all__ = [
    "RULES", "Config", "ConfigError", "ExitCode", "FileResult", "FileStatus", "Finding",
    "InputError", "LimitExceeded", "Limits", "Location", "MalformedInput", "Report", "Rule",
    "ScanConfig", "Severity", "TrainguardError", "UsageError", "load_config", "rule",
]
