"""Checkpoint and model integrity: hashing, OMS v1.0 manifests, signing, trust policy, diff."""
