"""Rules for the ledger and investigations (issue 6): ids TG-LED-NNN, never reused.

Listed in the one registry (:mod:`trainguard.core.rules`), which checks ids are unique.
"""

from __future__ import annotations

from trainguard.core.findings import Severity
from trainguard.core.rules import Rule

_C, _H, _M, _L = Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW

RULES: list[Rule] = [
    Rule("TG-LED-001", "Ledger history was changed", _C,
         "An entry was edited, deleted, reordered or the hash chain rewritten: the ledger no "
         "longer matches a tree head kept outside it, or its own hash chain is broken. The "
         "record of who saved, signed and loaded models cannot be trusted.",
         "Restore the ledger from a copy that verifies against the kept head and find out who "
         "had write access to the database."),
    Rule("TG-LED-002", "Ledger tree head is not signed by the expected key", _H,
         "The head's signature does not verify, or it was signed by another key: it proves "
         "nothing about the ledger's history.",
         "Fetch the head again from the ledger's operator; check the public key you use."),
    Rule("TG-LED-003", "Ledger is not consistent with the head a witness kept", _C,
         "The new head does not extend the last head the witness co-signed (smaller size, a "
         "different root at the same size, or a consistency proof that fails): the log was "
         "truncated or forked.",
         "Do not co-sign; compare both heads with their operators and audit the ledger."),
]
