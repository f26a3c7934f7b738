"""Checkpoint and model integrity: hashing, OMS v1.0 manifests, signing, trust policy, diff.

Example (sign a checkpoint directory with a fresh key, verify it under an ad-hoc policy)::

    from pathlib import Path
    from trainguard.integrity.keys import PrivateKey
    from trainguard.integrity.signing import sign
    from trainguard.integrity.trust import TrustPolicy
    from trainguard.integrity.verify import verify

    key = PrivateKey.generate("p256")
    sig = sign(Path("ckpt/step-1000"), key=key, run={"step": 1000})
    result = verify(Path("ckpt/step-1000"), sig,
                    policy=TrustPolicy.trusting(keys=[key.public_key()]))
    assert result.ok, result.problems      # else result.changes names files and tensors

With a ``[trust]`` table in trainguard.toml, ``verify(model, sig)`` uses that policy
(docs/signing.md).
"""
