"""Properties of the OMS encodings (hypothesis): round trips, and hostile input never escapes
as anything but MalformedBundle / MalformedInput."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from trainguard.core.errors import MalformedInput
from trainguard.integrity.bundle import Bundle, MalformedBundle, Signature, pae
from trainguard.integrity.manifest import Manifest, Resource, Serialization

_segment = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\x00:"),
                   min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
_path = st.lists(_segment, min_size=1, max_size=3).map("/".join)


@st.composite
def manifests(draw: Any) -> Manifest:
    names = sorted(set(draw(st.lists(_path, min_size=1, max_size=12))))
    shards = draw(st.booleans())
    size = draw(st.integers(1, 1 << 40))
    ser = Serialization(method="shards" if shards else "files",
                        hash_type=draw(st.sampled_from(["sha256", "blake2b"])),
                        allow_symlinks=draw(st.booleans()),
                        ignore_paths=tuple(sorted(set(draw(st.lists(_path, max_size=3))))),
                        shard_size=size if shards else None)
    if shards:
        names = [f"{n}:0:{draw(st.integers(1, 1 << 40))}" for n in names]
    res = tuple(Resource(n, ser.resource_algorithm, draw(st.binary(min_size=32, max_size=32)))
                for n in names)
    return Manifest(model_name=draw(_segment), serialization=ser, resources=res)


@given(manifests())
@settings(max_examples=100, deadline=None)
def test_statement_round_trips_byte_for_byte(m: Manifest) -> None:
    payload = m.payload()
    again = Manifest.from_statement(json.loads(payload))
    assert again.payload() == payload
    assert again.root_digest() == m.root_digest()


@given(st.binary(max_size=300), st.text(max_size=40),
       st.lists(st.binary(min_size=1, max_size=80), min_size=1, max_size=3),
       st.one_of(st.none(), st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)))
@settings(max_examples=100, deadline=None)
def test_bundle_round_trips(payload: bytes, ptype: str, sigs: list[bytes],
                            hint: str | None) -> None:
    b = Bundle(payload=payload, signatures=tuple(Signature(s) for s in sigs), payload_type=ptype,
               key_hint=hint)
    again = Bundle.from_json(b.to_json())
    assert again == b
    assert again.signed_bytes() == pae(ptype, payload)


def test_pae_matches_the_dsse_spec_example() -> None:
    # secure-systems-lab/dsse protocol.md test vector
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world")


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c,
                                                                          max_size=4),
                     max_leaves=20)
_keys = st.sampled_from(["mediaType", "verificationMaterial", "dsseEnvelope", "payload",
                         "payloadType", "signatures", "sig", "keyid", "publicKey", "hint",
                         "x509CertificateChain", "certificates", "rawBytes", "tlogEntries"])
_bundleish = st.recursive(_json, lambda c: st.dictionaries(_keys, c, max_size=5), max_leaves=30)


@given(_bundleish)
@settings(max_examples=150, deadline=None)
def test_arbitrary_json_is_a_bundle_or_malformed(doc: Any) -> None:
    with contextlib.suppress(MalformedBundle):
        Bundle.from_json(json.dumps(doc).encode())


_stmtish = st.fixed_dictionaries({
    "_type": st.just("https://in-toto.io/Statement/v1"),
    "predicateType": st.just("https://model_signing/signature/v1.0"),
    "subject": _json, "predicate": st.dictionaries(
        st.sampled_from(["serialization", "resources"]), _json, max_size=2)})


@given(_stmtish)
@settings(max_examples=150, deadline=None)
def test_arbitrary_statement_is_a_manifest_or_malformed(doc: Any) -> None:
    with contextlib.suppress(MalformedInput):
        Manifest.from_statement(doc)
