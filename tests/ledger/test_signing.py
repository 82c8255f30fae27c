"""Signed entries (ledger/signing.py): known answers for signatures, roles, replays and hostile keyrings."""

from __future__ import annotations

import base64
import os
import stat
import string

import pytest
import yaml

from tests.ledger.helpers import forge
from welfare_offsets.ledger import Ledger
from welfare_offsets.ledger.errors import LedgerError
from welfare_offsets.ledger.signing import MAX_KEYRING_BYTES, SIGNATURE, Keyring, SigningKey, generate_key


@pytest.fixture
def keys(tmp_path):
    """An approver's and a runner's keys, and the auditor's keyring that names them."""
    approver_pub = generate_key(tmp_path / "approver.pem")
    runner_pub = generate_key(tmp_path / "runner.pem")
    ring = tmp_path / "keyring.yaml"
    ring.write_text(
        yaml.safe_dump(
            {
                "keys": [
                    {"key": approver_pub, "identity": "alice@lab", "roles": ["approver"]},
                    {"key": runner_pub, "identity": "gpu-runner-3", "roles": ["runner"]},
                ]
            }
        )
    )
    return SigningKey.load(tmp_path / "approver.pem"), SigningKey.load(tmp_path / "runner.pem"), Keyring.load(ring)


FUND = {"account": "lab", "note": "", "postings": {"@external": -1_000_000, "lab": 1_000_000}}
RESERVE = {"account": "lab", "session": "s1", "postings": {"lab": -5, "@reserved:s1": 5}}


def test_each_role_signs_its_own_kinds_and_nothing_else(keys):
    approver, runner, ring = keys
    seen: set[bytes] = set()
    assert ring.problem("fund", approver.sign("fund", FUND), seen) is None
    assert ring.problem("reserve", runner.sign("reserve", RESERVE), seen) is None
    refused = ring.problem("fund", runner.sign("fund", FUND), seen)  # a runner's fund
    assert "gpu-runner-3" in refused and "does not allow it" in refused


def test_a_changed_entry_a_replay_an_unknown_key_and_no_signature_are_each_refused(keys, tmp_path):
    approver, _, ring = keys
    seen: set[bytes] = set()
    signed = approver.sign("fund", FUND)
    assert "does not match" in ring.problem("fund", {**signed, "account": "mallory"}, set())
    assert "does not match" in ring.problem("transfer", signed, set())  # the kind is signed too
    assert ring.problem("fund", signed, seen) is None
    assert "replay" in ring.problem("fund", signed, seen)
    generate_key(tmp_path / "stranger.pem")
    stranger = SigningKey.load(tmp_path / "stranger.pem")
    assert "does not hold" in ring.problem("fund", stranger.sign("fund", FUND), set())
    assert ring.problem("fund", FUND, set()) == "unsigned"
    assert "malformed" in ring.problem("fund", {**FUND, SIGNATURE: ["x"]}, set())


def respelled(sig: str) -> str:
    """The same 64 bytes in other base64: the last character before '==' carries 4 padding bits, which
    decoding ignores."""
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
    other = sig[:-3] + alphabet[alphabet.index(sig[-3]) ^ 1] + "=="
    assert base64.b64decode(other, validate=True) == base64.b64decode(sig) and other != sig
    return other


def test_a_replay_whose_signature_is_spelled_otherwise_is_refused(keys):
    approver, _, ring = keys
    seen: set[bytes] = set()
    signed = approver.sign("fund", FUND)
    assert ring.problem("fund", signed, seen) is None
    replay = {**signed, SIGNATURE: {**signed[SIGNATURE], "sig": respelled(signed[SIGNATURE]["sig"])}}
    malformed = "its signature is malformed: its sig is not canonical base64 (a padding bit is set)"
    assert ring.problem("fund", replay, seen) == malformed
    assert ring.problem("fund", replay, set()) == malformed  # not only as a replay: no other spelling is accepted


MALFORMED_SIGNATURES = {
    "key in a list": lambda real: {**real, "key": [real["key"]]},
    "key in an object": lambda real: {**real, "key": {"k": real["key"]}},
    "nonce a number": lambda real: {**real, "nonce": 7},
    "sig null": lambda real: {**real, "sig": None},
    "a list": lambda real: [real],
}


@pytest.mark.parametrize("malformed", MALFORMED_SIGNATURES)
def test_a_signature_that_is_not_three_texts_is_malformed(keys, malformed):
    approver, _, ring = keys
    signed = approver.sign("fund", FUND)
    signature = MALFORMED_SIGNATURES[malformed](signed[SIGNATURE])
    problem = ring.problem("fund", {**signed, SIGNATURE: signature}, set())
    assert problem == "its signature is malformed (expected text key, nonce and sig)"


def test_verify_with_a_keyring_catches_a_replay_spelled_otherwise(keys, tmp_path, monkeypatch, capsys):
    """The reviewer's case: a signed fund copied, its signature respelled, chained properly after it."""
    from welfare_offsets.ledger.cli import main as ledger_cli

    ring = tmp_path / "keyring.yaml"
    ledger = tmp_path / "ledger.sqlite"
    monkeypatch.setenv("WELFARE_LEDGER_KEY", str(tmp_path / "approver.pem"))
    with Ledger.open(ledger) as book:
        fund = book.fund("lab", 5.0)
    payload = {**fund.payload, SIGNATURE: {**fund.payload[SIGNATURE], "sig": respelled(fund.payload[SIGNATURE]["sig"])}}
    forge(ledger, "fund", payload)
    assert ledger_cli(["verify", "--ledger", str(ledger), "--keyring", str(ring)]) == 1
    assert "BROKEN at seq 2: signature: its signature is malformed" in capsys.readouterr().err


def test_a_new_key_is_private_to_its_owner_and_never_overwrites(tmp_path):
    path = tmp_path / "k.pem"
    public = generate_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(public) == 44
    before = path.read_bytes()
    with pytest.raises(LedgerError, match="never overwritten"):
        generate_key(path)
    assert path.read_bytes() == before
    link = tmp_path / "link.pem"
    link.symlink_to(tmp_path / "elsewhere.pem")
    with pytest.raises(LedgerError):
        generate_key(link)  # a link is not followed to write a key somewhere else
    assert not (tmp_path / "elsewhere.pem").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("- just a list\n", "keys"),
        ("keys: {a: 1}\n", "keys"),
        ("keys:\n  - {key: AAAA, identity: x, roles: [runner]}\n", "not an ed25519 public key"),
        ("keys:\n  - {key: '" + "A" * 43 + "=', identity: x, roles: [god]}\n", "roles"),
        ("keys:\n  - {key: '" + "A" * 43 + "=', identity: [x], roles: [runner]}\n", "identity"),
        ("keys:\n  - {key: '" + "A" * 43 + "=', identity: x, roles: [[approver]]}\n", r"keys\[1\]\.roles"),
        ("keys:\n  - {key: '" + "A" * 43 + "=', identity: x, roles: [{runner: 1}]}\n", r"keys\[1\]\.roles"),
        ("keys:\n  - {key: 12345, identity: x, roles: [runner]}\n", r"keys\[1\]\.key is not base64 text"),
        ("keys:\n  - {key: '" + "A" * 42 + "B=', identity: x, roles: [runner]}\n", "not canonical base64"),
        ("keys:\n  - {key: '" + "A" * 43 + "=', identity: x, roles: [runner], extra: 1}\n", "exactly"),
        ("a: &a [*a]\n", "keys"),
        ("keys: [\n", "YAML"),
    ],
)
def test_a_hostile_keyring_is_refused_with_what_is_wrong(tmp_path, text, message):
    ring = tmp_path / "ring.yaml"
    ring.write_text(text)
    with pytest.raises(LedgerError, match=message):
        Keyring.load(ring)


@pytest.mark.parametrize("what", ["fifo", "folder", "huge", "missing"])
def test_a_key_or_keyring_path_that_is_no_small_regular_file_is_refused_without_blocking(tmp_path, what):
    path = tmp_path / "given"
    if what == "fifo":
        os.mkfifo(path)  # no writer: opening it for reading would wait forever
    elif what == "folder":
        path.mkdir()
    elif what == "huge":
        path.write_bytes(b"#" * (MAX_KEYRING_BYTES + 1))
    expected = {"fifo": "regular file", "folder": "regular file", "huge": "larger than", "missing": "cannot read"}
    for load in (SigningKey.load, Keyring.load):
        with pytest.raises(LedgerError, match=expected[what]):
            load(path)


def test_verify_with_a_malformed_keyring_exits_2_with_one_line_naming_it(tmp_path, capsys):
    from welfare_offsets.ledger.cli import main as ledger_cli

    ledger = tmp_path / "ledger.sqlite"
    Ledger.open(ledger).close()
    ring = tmp_path / "ring.yaml"
    ring.write_text("keys:\n  - {key: '" + "A" * 43 + "=', identity: alice, roles: [[approver]]}\n")
    assert ledger_cli(["verify", "--ledger", str(ledger), "--keyring", str(ring)]) == 2
    assert capsys.readouterr().err == (
        f"welfare ledger: error: {ring}: keys[1].roles: expected a list of approver, runner\n"
    )


def test_a_file_that_is_not_a_key_is_refused(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(LedgerError, match="keygen"):
        SigningKey.load(bad)


def test_writers_sign_what_they_append_and_verify_checks_each_signer_s_role(tmp_path, monkeypatch, capsys):
    from welfare_offsets.ledger.cli import main as ledger_cli

    ledger = str(tmp_path / "ledger.sqlite")
    keys = {}
    for who in ("approver", "runner"):
        assert ledger_cli(["keygen", str(tmp_path / f"{who}.pem")]) == 0
        keys[who] = capsys.readouterr().out.split("keyring: ")[1].strip()
    ring = tmp_path / "keyring.yaml"
    ring.write_text(
        yaml.safe_dump(
            {
                "keys": [
                    {"key": keys["approver"], "identity": "alice@lab", "roles": ["approver"]},
                    {"key": keys["runner"], "identity": "gpu-runner-3", "roles": ["runner"]},
                ]
            }
        )
    )
    monkeypatch.setenv("WELFARE_LEDGER_KEY", str(tmp_path / "approver.pem"))
    assert ledger_cli(["fund", "--ledger", ledger, "--account", "lab", "--hours", "2"]) == 0
    assert ledger_cli(["verify", "--ledger", ledger, "--keyring", str(ring)]) == 0
    assert "every entry signed by a key of the keyring" in capsys.readouterr().out

    monkeypatch.setenv("WELFARE_LEDGER_KEY", str(tmp_path / "runner.pem"))  # a runner funds: written, then caught
    assert ledger_cli(["fund", "--ledger", ledger, "--account", "lab", "--hours", "5"]) == 0
    capsys.readouterr()
    assert ledger_cli(["verify", "--ledger", ledger, "--keyring", str(ring)]) == 1
    assert "gpu-runner-3, whose role (runner) does not allow it" in capsys.readouterr().err
    assert ledger_cli(["verify", "--ledger", ledger]) == 0  # without a keyring: the chain and accounts hold
    assert "2 signed, 0 unsigned" in capsys.readouterr().out


def test_an_unsigned_ledger_still_verifies_and_says_so_but_not_against_a_keyring(tmp_path, monkeypatch, capsys):
    from welfare_offsets.ledger.cli import main as ledger_cli

    monkeypatch.delenv("WELFARE_LEDGER_KEY", raising=False)
    ledger = str(tmp_path / "ledger.sqlite")
    assert ledger_cli(["fund", "--ledger", ledger, "--account", "lab", "--hours", "2"]) == 0
    assert ledger_cli(["verify", "--ledger", ledger]) == 0
    assert "0 signed, 1 unsigned" in capsys.readouterr().out
    ring = tmp_path / "keyring.yaml"
    ring.write_text(
        yaml.safe_dump({"keys": [{"key": generate_key(tmp_path / "k.pem"), "identity": "a", "roles": ["approver"]}]})
    )
    assert ledger_cli(["verify", "--ledger", ledger, "--keyring", str(ring)]) == 1
    assert "signature: unsigned" in capsys.readouterr().err


def test_keygen_refuses_an_existing_file_with_exit_2(tmp_path, capsys):
    from welfare_offsets.ledger.cli import main as ledger_cli

    existing = tmp_path / "ledger.sqlite"
    existing.write_bytes(b"precious")
    assert ledger_cli(["keygen", str(existing)]) == 2
    assert existing.read_bytes() == b"precious" and "never overwritten" in capsys.readouterr().err


def test_the_writer_s_key_is_loaded_only_to_write(tmp_path, monkeypatch, capsys):
    """A reader (verify) never needs the key; a writer with an unreadable one is refused before it appends."""
    from welfare_offsets.ledger.cli import main as ledger_cli

    ledger = str(tmp_path / "ledger.sqlite")
    monkeypatch.delenv("WELFARE_LEDGER_KEY", raising=False)
    assert ledger_cli(["fund", "--ledger", ledger, "--account", "lab", "--hours", "2"]) == 0
    monkeypatch.setenv("WELFARE_LEDGER_KEY", str(tmp_path / "missing.pem"))
    assert ledger_cli(["verify", "--ledger", ledger]) == 0
    capsys.readouterr()
    assert ledger_cli(["fund", "--ledger", ledger, "--account", "lab", "--hours", "2"]) == 2
    assert "keygen" in capsys.readouterr().err
    monkeypatch.delenv("WELFARE_LEDGER_KEY")
    assert ledger_cli(["verify", "--ledger", ledger]) == 0
    assert "1 unsigned" in capsys.readouterr().out  # the refused fund left nothing behind


def test_without_cryptography_keys_are_refused_with_how_to_install(tmp_path, monkeypatch):
    """The signing extra is optional: without it, making or loading a key says what to install (exit 2 at
    the command line), never an internal error."""
    import sys

    for name in [m for m in sys.modules if m == "cryptography" or m.startswith("cryptography.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cryptography", None)  # import cryptography... raises ImportError
    with pytest.raises(LedgerError, match="need the `cryptography` package"):
        generate_key(tmp_path / "alice.pem")
    assert not (tmp_path / "alice.pem").exists()


def test_a_key_in_a_folder_that_does_not_exist_says_so(tmp_path):
    with pytest.raises(LedgerError, match="its folder .* does not exist; create it first"):
        generate_key(tmp_path / "missing" / "alice.pem")
