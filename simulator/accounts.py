"""Who is calling: bearer token -> account.

With no key file every distinct token is its own account (zero configuration, still isolated).
With a key file (one ``TOKEN ACCOUNT`` pair per line, ``#`` comments) only listed tokens work.
Accounts made from bare tokens are named by a hash, so the store never holds a token.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from simulator.errors import Unauthorized


class Accounts:
    def __init__(self, keys: dict[str, str] | None = None):
        self.keys = keys

    @classmethod
    def from_file(cls, path: Path | None) -> Accounts:
        if path is None:
            return cls(None)
        keys: dict[str, str] = {}
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{path}:{number}: expected 'TOKEN ACCOUNT', got {line!r}")
            token, account = parts
            if keys.get(token, account) != account:
                # Which one was meant? Taking the last silently gave one account's key to another.
                raise ValueError(f"{path}:{number}: this token is already the key of account {keys[token]!r}")
            keys[token] = account
        return cls(keys)

    def account_for(self, authorization: str | None) -> str:
        token = _bearer_token(authorization)
        if token is None:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        if self.keys is None:
            return "acct_" + hashlib.sha256(token.encode()).hexdigest()[:20]
        account = self.keys.get(token)
        if account is None:
            raise Unauthorized("unknown API key")
        return account


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
