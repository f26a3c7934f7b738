"""The trust policy (``[trust]`` in trainguard.toml): who may produce what a project's jobs load.

Fail closed: a policy without identities or without rules trusts nobody, so every verification
under it fails. The verifier, not the signer, decides which ignore paths are acceptable.

Example::

    [trust]
    project = "llm-pretrain"
    ca_roots = ["ca/root.pem"]
    crls = ["ca/crl.pem"]
    accept_ignore_paths = [".git", ".gitattributes", ".github", ".gitignore", "logs"]

    [trust.roles.engineer]
    [trust.roles.reviewer]
    [trust.roles.intern]
    cosign_by = ["reviewer"]          # two-person rule

    [trust.identities.alice]
    key = "keys/alice.pub"
    roles = ["engineer", "reviewer"]

    [trust.identities.ivan]
    subject = "CN=Ivan,O=Lab"         # certificate subject pin (RFC 4514), and/or email = ...
    roles = ["intern"]

    [[trust.rules]]
    projects = ["llm-pretrain"]
    paths = ["/shared/checkpoints/**"]
    roles = ["engineer", "intern"]

Python::

    from trainguard.integrity.trust import TrustPolicy
    policy = TrustPolicy.from_config()            # discovered trainguard.toml
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.core.config import Config, load_config
from trainguard.core.errors import ConfigError, InputError
from trainguard.integrity.certs import CertIdentity, load_certs, load_crls
from trainguard.integrity.keys import PublicKey
from trainguard.integrity.manifest import GIT_PATHS

_TOP_KEYS = {"project", "accept_ignore_paths", "ca_roots", "crls", "require_crl",
             "certificate_time", "require_checkpoint_statement", "roles", "identities", "rules"}
_IDENT_KEYS = {"key", "key_id", "subject", "email", "roles"}
_ROLE_KEYS = {"cosign_by", "description"}
_RULE_KEYS = {"projects", "paths", "roles"}


@dataclass(frozen=True)
class IdentitySpec:
    """One trusted identity: a public key file, or a certificate subject / e-mail pin."""

    name: str
    roles: tuple[str, ...]
    key: PublicKey | None = None
    key_id: str | None = None
    subject: str | None = None
    email: str | None = None

    @property
    def kind(self) -> str:
        return "key" if self.key_id is not None else "certificate"

    def matches_cert(self, ident: CertIdentity) -> bool:
        if self.kind != "certificate":
            return False
        if self.subject is not None and _norm_dn(self.subject) != _norm_dn(ident.subject):
            return False
        return not (self.email is not None
                    and self.email.lower() not in {e.lower() for e in ident.emails})


def _norm_dn(dn: str) -> str:
    from cryptography import x509

    try:
        return str(x509.Name.from_rfc4514_string(dn).rfc4514_string())
    except ValueError:
        return dn


@dataclass(frozen=True)
class RoleSpec:
    name: str
    #: roles one of whose members must co-sign an artifact produced under this role
    cosign_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    """Artifacts at ``paths`` loaded by ``projects`` may be produced by ``roles``."""

    projects: tuple[str, ...]
    paths: tuple[str, ...]
    roles: tuple[str, ...]

    def applies(self, project: str | None, model_path: Path, base: Path) -> bool:
        if not any(p in ("*", project) for p in self.projects):
            return False
        if not self.paths:
            return True
        target = model_path.resolve().as_posix()
        for pattern in self.paths:
            full = pattern if os.path.isabs(pattern) else (base.resolve() / pattern).as_posix()
            if fnmatch.fnmatchcase(target, full) or fnmatch.fnmatchcase(target + "/", full):
                return True
        return False


@dataclass(frozen=True)
class Decision:
    """The policy's answer for one signer: allowed or why not, and any co-sign requirement."""

    allowed: bool
    reason: str = ""
    #: roles of which one member must co-sign (empty: no co-signature needed)
    cosign_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrustPolicy:
    identities: tuple[IdentitySpec, ...] = ()
    roles: Mapping[str, RoleSpec] = field(default_factory=dict, hash=False)
    rules: tuple[Rule, ...] = ()
    accept_ignore_paths: tuple[str, ...] = GIT_PATHS
    ca_roots: tuple[Any, ...] = ()
    crls: tuple[Any, ...] = ()
    require_crl: bool = False
    #: "verify" (certificates valid now) or "signing" (valid at the signed signing time)
    certificate_time: str = "verify"
    require_checkpoint_statement: bool = False
    project: str | None = None
    base_dir: Path = field(default_factory=Path.cwd)
    source: str = "default (empty: trusts nobody)"

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Config | None = None, *, path: Path | None = None) -> TrustPolicy:
        """The ``[trust]`` table of ``config`` (default: the discovered trainguard.toml)."""
        cfg = config if config is not None else load_config(path)
        base = cfg.source.parent if cfg.source is not None else Path.cwd()
        src = f"[trust] in {cfg.source}" if cfg.source is not None else cls.source
        return cls.from_section(cfg.section("trust"), base_dir=base, source=src)

    @classmethod
    def from_section(cls, raw: Mapping[str, Any], *, base_dir: Path | None = None,
                     source: str = "[trust]") -> TrustPolicy:
        """Validate a parsed ``[trust]`` table; ConfigError names the first problem."""
        base = base_dir or Path.cwd()
        if not isinstance(raw, Mapping):
            raise ConfigError("[trust] must be a table")
        _keys(raw, _TOP_KEYS, "[trust]")
        roles_raw = _table(raw.get("roles", {}), "[trust.roles]")
        roles: dict[str, RoleSpec] = {}
        for name, raw_role in roles_raw.items():
            spec = _table(raw_role, f"[trust.roles.{name}]")
            _keys(spec, _ROLE_KEYS, f"[trust.roles.{name}]")
            roles[name] = RoleSpec(name, _strs(spec.get("cosign_by", []),
                                               f"[trust.roles.{name}] cosign_by"))
        for role in roles.values():
            _known_roles(role.cosign_by, roles, f"[trust.roles.{role.name}] cosign_by")
        idents = []
        for name, spec in _table(raw.get("identities", {}), "[trust.identities]").items():
            idents.append(_identity(name, _table(spec, f"[trust.identities.{name}]"), roles, base))
        rules_raw = raw.get("rules", [])
        if not isinstance(rules_raw, list):
            raise ConfigError("[[trust.rules]] must be an array of tables")
        rules = []
        for i, raw_rule in enumerate(rules_raw):
            where = f"[[trust.rules]] #{i + 1}"
            r = _table(raw_rule, where)
            _keys(r, _RULE_KEYS, where)
            rule = Rule(projects=_strs(r.get("projects", ["*"]), f"{where} projects"),
                        paths=_strs(r.get("paths", []), f"{where} paths"),
                        roles=_strs(r.get("roles", []), f"{where} roles"))
            if not rule.roles:
                raise ConfigError(f"{where}: roles must name at least one role")
            _known_roles(rule.roles, roles, f"{where} roles")
            rules.append(rule)
        ctime = raw.get("certificate_time", "verify")
        if ctime not in ("verify", "signing"):
            raise ConfigError("[trust] certificate_time must be \"verify\" or \"signing\"")
        for flag in ("require_crl", "require_checkpoint_statement"):
            if not isinstance(raw.get(flag, False), bool):
                raise ConfigError(f"[trust] {flag} must be true or false")
        project = raw.get("project")
        if project is not None and not isinstance(project, str):
            raise ConfigError("[trust] project must be a string")
        accept = _strs(raw.get("accept_ignore_paths", list(GIT_PATHS)),
                       "[trust] accept_ignore_paths")
        roots: list[Any] = []
        for p in _strs(raw.get("ca_roots", []), "[trust] ca_roots"):
            roots += _load(load_certs, base / p, "[trust] ca_roots")
        crls = _load(load_crls, [base / p for p in _strs(raw.get("crls", []), "[trust] crls")],
                     "[trust] crls")
        return cls(identities=tuple(idents), roles=roles, rules=tuple(rules),
                   accept_ignore_paths=tuple(a.strip("/") for a in accept),
                   ca_roots=tuple(roots), crls=tuple(crls),
                   require_crl=bool(raw.get("require_crl", False)), certificate_time=ctime,
                   require_checkpoint_statement=bool(raw.get("require_checkpoint_statement",
                                                             False)),
                   project=project, base_dir=base, source=source)

    @classmethod
    def trusting(cls, *, keys: Sequence[PublicKey] = (), ca_roots: Sequence[Any] = (),
                 crls: Sequence[Any] = (), subjects: Sequence[str] = (),
                 emails: Sequence[str] = (), accept_ignore_paths: Iterable[str] = GIT_PATHS,
                 cosign_keys: Sequence[PublicKey] = ()) -> TrustPolicy:
        """An ad-hoc policy (``verify --key`` / ``--ca-root``): these keys, or certificates from
        these roots with one of these subjects/e-mails (any, if none is given), may produce
        anything. ``cosign_keys`` are trusted as the role ``reviewer`` only."""
        roles = {"trusted": RoleSpec("trusted"), "reviewer": RoleSpec("reviewer")}
        idents = [IdentitySpec(f"key:{k.key_id[:16]}", ("trusted",), key=k, key_id=k.key_id)
                  for k in keys]
        idents += [IdentitySpec(f"cosigner:{k.key_id[:16]}", ("reviewer",), key=k,
                                key_id=k.key_id) for k in cosign_keys]
        if ca_roots:
            if not subjects and not emails:
                idents.append(IdentitySpec("ca:any", ("trusted",)))
            idents += [IdentitySpec(f"subject:{s}", ("trusted",), subject=s) for s in subjects]
            idents += [IdentitySpec(f"email:{e}", ("trusted",), email=e) for e in emails]
        return cls(identities=tuple(idents), roles=roles,
                   rules=(Rule(("*",), (), ("trusted",)),) if idents else (),
                   accept_ignore_paths=tuple(a.strip("/") for a in accept_ignore_paths),
                   ca_roots=tuple(ca_roots), crls=tuple(crls), source="command line")

    # --- questions ---------------------------------------------------------------------------
    @property
    def empty(self) -> bool:
        return not self.identities or not self.rules

    def key_identities(self) -> list[IdentitySpec]:
        return [i for i in self.identities if i.kind == "key"]

    def for_key_id(self, key_id: str) -> IdentitySpec | None:
        for i in self.identities:
            if i.key_id is not None and i.key_id == key_id:
                return i
        return None

    def for_cert(self, ident: CertIdentity) -> IdentitySpec | None:
        for i in self.identities:
            if i.matches_cert(ident):
                return i
        return None

    def ignore_path_accepted(self, path: str) -> bool:
        p = path.strip("/")
        return any(p == a for a in self.accept_ignore_paths)

    def decide(self, roles: Sequence[str], *, project: str | None,
               model_path: Path) -> Decision:
        """May an identity with ``roles`` produce the artifact at ``model_path`` for ``project``?

        The rules that apply to (project, path) permit some roles; if one of the signer's
        permitted roles needs no co-signature, none is needed; otherwise a member of any role
        in the permitted roles' ``cosign_by`` must co-sign.
        """
        if self.empty:
            return Decision(False, f"the trust policy ({self.source}) has no identities or no "
                                   "rules: nothing is trusted")
        project = project if project is not None else self.project
        rules = [r for r in self.rules if r.applies(project, model_path, self.base_dir)]
        if not rules:
            return Decision(False, f"no [[trust.rules]] entry covers project {project!r} and "
                                   f"path {model_path}")
        permitted = [r for r in roles if any(r in rule.roles for rule in rules)]
        if not permitted:
            allowed = sorted({x for rule in rules for x in rule.roles})
            return Decision(False, f"role(s) {', '.join(roles) or '(none)'} may not produce "
                                   f"this artifact (allowed: {', '.join(allowed)})")
        needs = [self.roles[r].cosign_by if r in self.roles else () for r in permitted]
        if any(not n for n in needs):
            return Decision(True)
        return Decision(True, cosign_by=tuple(sorted({x for n in needs for x in n})))


def _keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)}")


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table")
    return value


def _strs(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where} must be a list of non-empty strings")
    return tuple(value)


def _known_roles(names: Iterable[str], roles: Mapping[str, RoleSpec], where: str) -> None:
    unknown = sorted(set(names) - set(roles))
    if unknown:
        raise ConfigError(f"{where}: undeclared role(s) {', '.join(unknown)}",
                          remedy="declare every role as a [trust.roles.NAME] table")


def _load(loader: Any, arg: Any, where: str) -> list[Any]:
    try:
        return list(loader(arg))
    except InputError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None


def _identity(name: str, spec: dict[str, Any], roles: Mapping[str, RoleSpec],
              base: Path) -> IdentitySpec:
    where = f"[trust.identities.{name}]"
    _keys(spec, _IDENT_KEYS, where)
    rl = _strs(spec.get("roles", []), f"{where} roles")
    if not rl:
        raise ConfigError(f"{where}: roles must name at least one role")
    _known_roles(rl, roles, f"{where} roles")
    for k in ("key", "key_id", "subject", "email"):
        if k in spec and not isinstance(spec[k], str):
            raise ConfigError(f"{where} {k} must be a string")
    has_key = "key" in spec or "key_id" in spec
    has_cert = "subject" in spec or "email" in spec
    if has_key == has_cert:
        raise ConfigError(f"{where}: give a key (key or key_id) or a certificate pin (subject "
                          "and/or email), not both and not neither")
    if "key" in spec:
        try:
            pk = PublicKey.load(base / spec["key"])
        except InputError as exc:
            raise ConfigError(f"{where} key: {exc.message}") from None
        if "key_id" in spec and spec["key_id"].lower() != pk.key_id:
            raise ConfigError(f"{where}: key_id does not match the key file")
        return IdentitySpec(name, rl, key=pk, key_id=pk.key_id)
    if "key_id" in spec:
        raise ConfigError(f"{where}: key_id alone cannot check a signature (OMS key bundles "
                          "carry only the key's hash)",
                          remedy="give the public key file: key = ...")
    return IdentitySpec(name, rl, subject=spec.get("subject"), email=spec.get("email"))
