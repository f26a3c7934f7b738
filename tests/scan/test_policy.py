"""Policy decisions that no single bypass case pins down: allow patterns never leak modules."""

from __future__ import annotations

import pytest

from trainguard.core.findings import Severity
from trainguard.scan.policy import Policy


@pytest.mark.parametrize(
    ("module", "name", "uses"),
    [
        # framework class patterns must not admit a dangerous module reached as an attribute
        ("torch.nn.functional", "os", {"import"}),
        ("torch.nn.modules.module", "subprocess.Popen", {"construct"}),
        ("sklearn.utils", "os.Popen", {"call"}),
        ("scipy.sparse.subprocess", "Popen", {"construct"}),
        ("numpy.dtypes.os", "Popen", {"call"}),
    ],
)
def test_allow_patterns_do_not_leak_dangerous_modules(
    module: str, name: str, uses: set[str]
) -> None:
    verdict = Policy().classify(module, name, uses)
    assert verdict.rule_id == "TG-PKL-001"
    assert verdict.severity is Severity.CRITICAL


def test_user_allow_patterns_never_override_the_deny_list() -> None:
    policy = Policy(["mylab.**", "os.*"])
    assert policy.classify("mylab.models", "TinyNet", {"construct"}).rule_id is None
    assert policy.classify("os", "system", {"call"}).rule_id == "TG-PKL-001"
    assert policy.classify("mylab.models", "os.system", {"call"}).rule_id == "TG-PKL-001"


def test_allow_list_is_use_specific() -> None:
    policy = Policy()
    # a safe reference may be imported, not called
    assert policy.classify("torch", "float32", {"import"}).rule_id is None
    assert policy.classify("torch", "float32", {"import", "call"}).rule_id == "TG-PKL-002"
    # a module class may be rebuilt (NEWOBJ), not called with arguments (REDUCE)
    assert policy.classify("torch.nn.modules.linear", "Linear", {"construct"}).rule_id is None
    assert policy.classify("torch.nn.modules.linear", "Linear", {"call"}).rule_id == "TG-PKL-002"


def test_unknown_globals_are_graded_by_use() -> None:
    policy = Policy()
    assert policy.classify("mylab", "f", {"import", "call"}).severity is Severity.HIGH
    assert policy.classify("mylab", "C", {"import", "construct"}).severity is Severity.MEDIUM
    assert policy.classify("mylab", "x", {"import"}).severity is Severity.MEDIUM
