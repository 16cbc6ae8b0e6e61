"""The node API's credentials (rln-node-api.md, Authentication): an Ed25519 root key per
node, whose public half the daemon gets as `--root-public-key`, and short-lived Biscuit
tokens signed with its private half.

The private key is a secret: it never goes into a log line or an exception message, and
errors from the biscuit library (whose key objects print themselves in full) are not
chained onto ours."""

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from biscuit_auth import BiscuitBuilder, KeyPair, PrivateKey

HEX_KEY = re.compile(r"^[0-9a-f]{64}$")
# The routes a read-only token opens (upstream's READ_ONLY_OPS, the ones the fleet knows).
# Everything else, /init and /unlock among them, needs admin.
READ_ONLY_ROUTES = frozenset(
    {"/btcbalance", "/listchannels", "/listpayments", "/listpeers", "/networkinfo", "/nodeinfo"}
)
# How biscuit-python spells a typed key in text.
PRIVATE_PREFIX = "ed25519-private/"


@dataclass(frozen=True)
class RootKey:
    private_hex: str
    public_hex: str

    def __repr__(self) -> str:
        # A dataclass repr would print the private key wherever a RootKey is logged.
        return f"RootKey(public_hex={self.public_hex!r})"


class InvalidRootKey(ValueError):
    """The private key is not 32 bytes of lowercase hex. Says nothing about the value."""


def new_root_key() -> RootKey:
    pair = KeyPair()
    return RootKey(
        private_hex=pair.private_key.to_bytes().hex(),
        public_hex=pair.public_key.to_bytes().hex(),
    )


def public_key_of(private_hex: str) -> str:
    """The hex public key (what the daemon is started with) of a stored private key."""
    return KeyPair.from_private_key(_private_key(private_hex)).public_key.to_bytes().hex()


def admin_token(private_hex: str, ttl_seconds: float = 300) -> str:
    return _token(private_hex, "admin", [], ttl_seconds)


def read_only_token(private_hex: str, ttl_seconds: float = 300) -> str:
    return _token(private_hex, "read-only", [], ttl_seconds)


def route_token(private_hex: str, path: str, ttl_seconds: float = 300) -> str:
    """The least token that opens this route: read-only for a read route, else admin. A
    token that leaks from a read call can then change nothing on the node."""
    if path in READ_ONLY_ROUTES:
        return read_only_token(private_hex, ttl_seconds)
    return admin_token(private_hex, ttl_seconds)


def custom_token(private_hex: str, routes: list[str], ttl_seconds: float = 300) -> str:
    """A token for exactly these routes (paths such as "/nodeinfo")."""
    return _token(private_hex, "custom", routes, ttl_seconds)


def _token(private_hex: str, role: str, routes: list[str], ttl_seconds: float) -> str:
    expires = datetime.now(UTC) + timedelta(seconds=ttl_seconds)
    builder = BiscuitBuilder(
        "role({role}); check if time($t), $t <= {expires};",
        {"role": role, "expires": expires},
    )
    for route in routes:
        # Parameters, not string formatting: a route can never inject datalog.
        builder.add_code('right("api", {route});', {"route": route})
    return builder.build(_private_key(private_hex)).to_base64()


def _private_key(private_hex: str) -> PrivateKey:
    if not HEX_KEY.match(private_hex):
        raise InvalidRootKey("root private key must be 64 lowercase hex characters")
    try:
        return PrivateKey(PRIVATE_PREFIX + private_hex)
    except ValueError:
        raise InvalidRootKey("root private key is not a valid Ed25519 key") from None
