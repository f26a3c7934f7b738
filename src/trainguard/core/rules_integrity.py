"""Rules for signing, verification, trust policy and checkpoint integrity
(issue 3): ids TG-SIG-/TG-INT-NNN, never reused.

Listed in the one registry (:mod:`trainguard.core.rules`), which checks ids are unique.
"""

from __future__ import annotations

from trainguard.core.findings import Severity
from trainguard.core.rules import Rule

_C, _H, _M, _L = Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW

RULES: list[Rule] = [
    # --- signatures and identities ----------------------------------------------------------
    Rule("TG-SIG-001", "Signature does not verify", _C,
         "The DSSE signature over the signed statement does not verify under any trusted key or "
         "the certificate's key: the statement was changed after signing, or another key signed "
         "it (a bundle of another model or another signer swapped in).",
         "Do not load the artifact. Re-sign it from a trusted copy and find out who replaced the "
         "signature."),
    Rule("TG-SIG-002", "Signature bundle is malformed", _H,
         "The signature file is not a well-formed Sigstore bundle v0.3 with an OMS v1.0 in-toto "
         "statement (bad JSON, wrong types, bad base64, oversized, inconsistent root digest). "
         "A signature that cannot be read is treated as a signature that does not verify.",
         "Re-sign the model; check the file was not truncated or replaced."),
    Rule("TG-SIG-003", "Signer is not a trusted identity", _H,
         "The signature verifies, but its key or certificate matches no identity of the trust "
         "policy.",
         "Add the signer to [trust.identities] if it should be trusted, or find out who signed."),
    Rule("TG-SIG-004", "Certificate does not chain to a trusted CA", _H,
         "The signing certificate was not issued (directly or through the bundled "
         "intermediates) by a CA root of the trust policy, or may not be used for signing.",
         "Sign with a certificate from the internal CA; list the CA in [trust] ca_roots."),
    Rule("TG-SIG-005", "Certificate expired or not yet valid", _H,
         "The signing certificate is outside its validity period at the time the policy checks "
         "(verification time by default). The reference tool checks at the certificate's start "
         "and so accepts expired certificates.",
         "Re-sign with a current certificate."),
    Rule("TG-SIG-006", "Certificate revoked", _C,
         "A certificate of the signing chain is listed in a CRL of the trust policy: its key "
         "is no longer trusted (lost, stolen, or its holder left).",
         "Do not load the artifact; find who signed it with the revoked certificate."),
    # --- trust policy ------------------------------------------------------------------------
    Rule("TG-SIG-007", "Signer's role may not produce this artifact", _H,
         "No [[trust.rules]] entry lets the signer's roles produce artifacts at this path for "
         "this project, or the policy has no rules at all (fail closed).",
         "Have an identity with a permitted role sign it, or extend [[trust.rules]]."),
    Rule("TG-SIG-008", "Signer-chosen ignore path refused", _H,
         "The signature leaves paths unchecked that the verifier's policy does not accept. "
         "An attacker who signs with an ignore path can later swap whatever lives there (an "
         "optimizer state, a tokenizer).",
         "Re-sign without the ignore path, or add it to [trust] accept_ignore_paths."),
    Rule("TG-SIG-009", "Required co-signature missing", _H,
         "The artifact was produced under a role that needs a second person (two-person rule) "
         "and no valid co-signature from a reviewer role is present.",
         "Have a reviewer check the artifact and run `trainguard cosign`."),
    Rule("TG-SIG-010", "Trainguard statement invalid", _H,
         "The attestation file beside the signature holds a statement that does not verify, "
         "names another subject, or was signed by someone else than the model signature.",
         "Re-sign the model (trainguard sign writes both statements)."),
    # --- integrity ---------------------------------------------------------------------------
    Rule("TG-INT-001", "Signed file changed", _C,
         "A file's digest differs from the signed digest: its bytes changed after signing.",
         "Do not load it; compare with `trainguard diff` against a trusted copy."),
    Rule("TG-INT-002", "Signed file missing", _H,
         "A file listed in the signature is missing (deleted or renamed).",
         "Restore the file from a trusted copy."),
    Rule("TG-INT-003", "Unsigned file present", _H,
         "A file that is not part of the signature was added to the model directory; loaders "
         "may pick it up (an extra shard, a replaced index, a pickle beside safetensors).",
         "Remove the file, or re-sign the model if it belongs there."),
    Rule("TG-INT-004", "Tensor changed", _C,
         "The checkpoint statement locates the change: these tensors' bytes, dtype or shape "
         "differ from what was signed.",
         "Do not load it; find who wrote the file after it was signed."),
    Rule("TG-INT-005", "Optimizer hyperparameter or RNG state changed", _C,
         "The saved optimizer hyperparameters (lr, betas, eps, weight decay, ...) or RNG "
         "states differ from what was signed: resuming would silently change training.",
         "Do not resume from it; restore the checkpoint from a trusted copy."),
]
