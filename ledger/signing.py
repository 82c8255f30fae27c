"""Signed entries: who wrote each entry, and whether their role allows it.

The hash chain proves that an entry has not changed since the anchors that cover it; it cannot say who
wrote it: any process that can append can append a `fund`. A writer that holds a key signs every entry it
writes (ed25519). The auditor holds a keyring that maps public keys to identities and roles, and
`welfare ledger verify --keyring` rejects an entry that is unsigned, wrongly signed, signed by a key the
keyring does not know, or of a kind outside its signer's role (a runner's `fund`).

What is signed: a domain line, then the canonical JSON of the entry's kind, its payload without the
signature, the public key and a random nonce. The signature travels inside the payload (`signature`:
key, nonce, sig, base64), so it is hashed into the chain like every other field and needs nothing from the
store. The entry's place (seq, previous hash) stays the chain's and the anchors' to prove; the nonce makes
every signature unique, so a replayed copy of a signed entry is caught as a signature seen twice (compared
as bytes; only the one base64 spelling the writer makes is accepted).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from welfare_offsets.ledger.chain import canonical_json
from welfare_offsets.ledger.errors import LedgerError
from welfare_offsets.ledger.files import read_small_file

DOMAIN = b"welfare-offsets ledger entry v1\n"
SIGNATURE = "signature"  # the payload field that holds it
KEY_ENV_VAR = "WELFARE_LEDGER_KEY"  # a writer's private key file
ROLES = {
    "approver": frozenset({"fund", "transfer", "correction"}),
    "runner": frozenset({"reserve", "settle", "measurement"}),
}
INSTALL = "pip install 'welfare-offsets[signing]'"
MAX_KEYRING_BYTES = 1 << 20
MAX_KEY_BYTES = 1 << 14  # an ed25519 PEM is 119 bytes


def _ed25519():
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as err:
        raise LedgerError(f"signed ledger entries need the `cryptography` package: {INSTALL}") from err
    return ed25519


def _serialization():
    _ed25519()  # the same clear error where cryptography is missing
    from cryptography.hazmat.primitives import serialization

    return serialization


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    """Only the one spelling `_b64` writes: base64 ignores a last character's padding bits, so without this
    check one signature would have several spellings and a replayed copy could pass as new."""
    if not isinstance(text, str):
        raise ValueError(f"{what} is not base64 text")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None
    if _b64(data) != text:
        raise ValueError(f"{what} is not canonical base64 (a padding bit is set)")
    return data


def signed_message(kind: str, payload: Mapping[str, Any], key: str, nonce: str) -> bytes:
    """The bytes a signature covers (the payload without its signature)."""
    unsigned = {k: v for k, v in payload.items() if k != SIGNATURE}
    return DOMAIN + canonical_json({"kind": kind, "payload": unsigned, "key": key, "nonce": nonce}).encode()


@dataclass(frozen=True)
class SigningKey:
    """A writer's private key; `sign` returns the payload with its signature."""

    private: Any  # cryptography's Ed25519PrivateKey
    public: str  # base64 of the raw 32-byte public key

    @classmethod
    def load(cls, path: str | os.PathLike) -> SigningKey:
        serialization = _serialization()
        ed25519 = _ed25519()
        where = Path(path).expanduser()
        try:
            key = serialization.load_pem_private_key(
                read_small_file(where, what="ledger signing key", max_bytes=MAX_KEY_BYTES), password=None
            )
        except (LedgerError, ValueError, TypeError) as err:
            raise LedgerError(
                f"{where}: not a readable ledger signing key ({err}); make one with `welfare ledger keygen`"
            ) from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise LedgerError(f"{where}: not an ed25519 key; make one with `welfare ledger keygen`")
        return cls(key, _public_text(key.public_key()))

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> SigningKey | None:
        """The key named by $WELFARE_LEDGER_KEY, or None: a writer without one writes unsigned entries."""
        return cls.load(environ[KEY_ENV_VAR]) if environ.get(KEY_ENV_VAR) else None

    def sign(self, kind: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        nonce = secrets.token_hex(16)
        sig = self.private.sign(signed_message(kind, payload, self.public, nonce))
        return {**payload, SIGNATURE: {"key": self.public, "nonce": nonce, "sig": _b64(sig)}}


class SigningTransaction:
    """A store transaction whose appends are signed with `key`; everything else is the transaction's own."""

    def __init__(self, tx, key: SigningKey):
        self._tx, self._key = tx, key

    def append(self, kind: str, payload: dict[str, Any]):
        return self._tx.append(kind, self._key.sign(kind, payload))

    def __getattr__(self, name: str):
        return getattr(self._tx, name)


def _public_text(public_key) -> str:
    serialization = _serialization()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _b64(raw)


def generate_key(path: str | os.PathLike) -> str:
    """Write a new private key to `path` (mode 0600; an existing path is never replaced) and return its
    public key, for the auditor's keyring."""
    serialization = _serialization()
    key = _ed25519().Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    where = Path(path).expanduser()
    try:
        fd = os.open(where, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise LedgerError(f"{where} exists; a key is never overwritten: choose another path") from None
    except OSError as err:
        if not where.parent.is_dir():
            raise LedgerError(f"{where}: its folder {where.parent} does not exist; create it first") from None
        raise LedgerError(f"{where}: cannot write the key ({err.strerror})") from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
        out.flush()
        os.fsync(out.fileno())
    return _public_text(key.public_key())


@dataclass(frozen=True)
class Signer:
    identity: str
    roles: frozenset[str]


class Keyring:
    """Public keys the auditor trusts: who each belongs to and which roles it holds. The file is YAML or JSON:

    keys:
      - {key: <base64 public key>, identity: alice@lab, roles: [approver]}
      - {key: <base64 public key>, identity: gpu-runner-3, roles: [runner]}
    """

    def __init__(self, signers: dict[str, Signer]):
        self.signers = signers

    @classmethod
    def load(cls, path: str | os.PathLike) -> Keyring:
        import yaml

        where = Path(path).expanduser()
        raw = read_small_file(where, what="keyring", max_bytes=MAX_KEYRING_BYTES)
        try:
            data = yaml.safe_load(raw)
            return cls(_signers(data))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise LedgerError(f"{where}: not YAML or JSON ({type(err).__name__})") from None
        except ValueError as err:
            raise LedgerError(f"{where}: {err}") from None

    def problem(self, kind: str, payload: Mapping[str, Any], seen: set[bytes]) -> str | None:
        """Why this entry's signature is not acceptable, or None. Call once per entry, in seq order, with
        one `seen` set per pass over the ledger: a signature already in it (a replayed entry) is a problem."""
        signature = payload.get(SIGNATURE)
        if signature is None:
            return "unsigned"
        if (
            not isinstance(signature, dict)
            or set(signature) != {"key", "nonce", "sig"}
            or not all(isinstance(part, str) for part in signature.values())
        ):
            return "its signature is malformed (expected text key, nonce and sig)"
        try:
            sig = _unb64(signature["sig"], "its sig")
        except ValueError as err:
            return f"its signature is malformed: {err}"
        signer = self.signers.get(signature["key"])
        if signer is None:
            return f"signed by key {signature['key'][:16]}..., which the keyring does not hold"
        if not _valid(signature["key"], signature["nonce"], sig, kind, payload):
            return f"its signature by {signer.identity} does not match its content"
        if sig in seen:
            return f"its signature by {signer.identity} was already used by an earlier entry (a replay)"
        seen.add(sig)
        allowed = frozenset().union(*(ROLES[r] for r in signer.roles))
        if kind not in allowed:
            roles = ", ".join(sorted(signer.roles))
            return f"a {kind} entry signed by {signer.identity}, whose role ({roles}) does not allow it"
        return None


def _valid(key: str, nonce: str, sig: bytes, kind: str, payload: Mapping[str, Any]) -> bool:
    ed25519 = _ed25519()
    from cryptography.exceptions import InvalidSignature

    try:
        public = ed25519.Ed25519PublicKey.from_public_bytes(_unb64(key, "key"))
        public.verify(sig, signed_message(kind, payload, key, nonce))
    except (ValueError, InvalidSignature):
        return False
    return True


def _signers(data: object) -> dict[str, Signer]:
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("expected a mapping with a `keys` list of {key, identity, roles}")
    signers: dict[str, Signer] = {}
    for n, item in enumerate(data["keys"], 1):
        where = f"keys[{n}]"
        if not isinstance(item, dict) or set(item) != {"key", "identity", "roles"}:
            raise ValueError(f"{where}: expected exactly key, identity and roles")
        key, identity, roles = item["key"], item["identity"], item["roles"]
        if len(_unb64(key, f"{where}.key")) != 32:
            raise ValueError(f"{where}.key: not an ed25519 public key (32 bytes, base64)")
        if not isinstance(identity, str) or not identity.strip() or len(identity) > 200:
            raise ValueError(f"{where}.identity: expected a name (text, at most 200 characters)")
        if not isinstance(roles, list) or not roles or not all(isinstance(r, str) and r in ROLES for r in roles):
            raise ValueError(f"{where}.roles: expected a list of {', '.join(ROLES)}")
        if key in signers:
            raise ValueError(f"{where}.key: listed twice")
        signers[key] = Signer(identity, frozenset(roles))
    return signers
