"""The API's configuration, from the environment (prefix FLEET_) or a .env file.

Only the issuer and the audience are required; everything else has a default that suits
an Amazon Cognito user pool (api/README.md).
"""

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.formats import Network, problem
from models.placement import RegionOffer, offered, placement_problem
from models.session import DatabaseUrl

AudienceClaim = Literal["aud", "client_id"]


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLEET_", env_file=".env", extra="ignore", frozen=True
    )

    database_url: DatabaseUrl = "postgresql://postgres@127.0.0.1:5432/fleet"
    # The fleet's Redis (the workers' FLEET_REDIS_URL): the API keeps its rate counts there.
    redis_url: str = "redis://127.0.0.1:6379/0"

    # OpenID Connect. Cognito: https://cognito-idp.<region>.amazonaws.com/<user pool id>.
    api_oidc_issuer: str = Field(min_length=1)
    # The app client id (Cognito) or API identifier the tokens must be issued for.
    api_oidc_audience: str = Field(min_length=1)
    # Which claims may carry the audience: ID tokens carry `aud`; Cognito access tokens
    # carry `client_id` and no `aud`. A token passes when any listed claim matches.
    api_audience_claims: tuple[AudienceClaim, ...] = Field(
        default=("aud", "client_id"), min_length=1
    )
    # If set, the token's `token_use` claim must equal it (Cognito: "access" or "id").
    api_token_use: str | None = None
    # Default: the issuer's /.well-known/jwks.json (Cognito publishes its keys there).
    api_jwks_url: str | None = None
    # Keys are fetched again after this long, and at most this often for an unknown key
    # id, so that tokens with made-up key ids cannot make us hammer the issuer.
    api_jwks_max_age_seconds: float = Field(default=3600.0, gt=0)
    api_jwks_min_refresh_seconds: float = Field(default=30.0, ge=0)
    api_jwks_timeout_seconds: float = Field(default=5.0, gt=0)
    # Clock skew tolerated on exp, nbf and iat.
    api_leeway_seconds: float = Field(default=30.0, ge=0, le=300)

    # A token whose groups claim lists this group sees and moves every node.
    api_admin_group: str | None = None
    api_groups_claim: str = "cognito:groups"

    # Per owner: nodes running or on their way (every state but new, destroy and
    # destroyed), and nodes that are not destroyed.
    api_max_live_nodes_per_owner: int = Field(default=10, ge=0)
    api_max_nodes_per_owner: int = Field(default=100, ge=0)
    # Per subject, across every API process: at most per_minute requests in any minute and
    # burst in the time that rate takes to earn them (api/ratelimit.py). The counts are kept
    # in this store (a `limits` storage URI): the fleet's Redis; memory:// counts in this
    # process only. The prefix keeps two fleets sharing a Redis apart.
    api_rate_limit_per_minute: int = Field(default=120, ge=1)
    api_rate_limit_burst: int = Field(default=30, ge=1)
    api_rate_limit_storage: str | None = None  # default: redis_url
    api_rate_limit_key_prefix: str = Field(default="fleet-api-rate", pattern=r"^[A-Za-z0-9:_-]+$")
    # Request bodies above this are refused (413) before they are parsed or the token is
    # checked. A create is a few hundred bytes.
    api_max_body_bytes: int = Field(default=16_384, ge=1024, le=1_048_576)
    # A page of nodes or events stops before the item that would take it past this many
    # bytes; its next_cursor gives the rest.
    api_max_page_bytes: int = Field(default=262_144, ge=4096)
    # How long an Idempotency-Key is remembered.
    api_idempotency_hours: int = Field(default=24, ge=1)

    # The fleet's regions, as the workers read them (FLEET_REGIONS, a JSON object of region
    # to its launch settings): the API reads only each region's "instance_types". Without
    # it, the API offers the default region and its default types only.
    regions: dict[str, RegionOffer] = {}

    # Defaults for POST /nodes, shared with `fleet node create`.
    default_region: str = "eu-west-1"
    default_instance_type: str = "t3.small"
    default_network: Network = "regtest"
    # FLEET_CHAIN, the workers' chain backends by network: the API reads only which
    # networks have one (a node of another is refused), so it may be given the keys
    # alone, e.g. {"regtest": {}}, and never hold the RPC passwords.
    chain: dict[Network, Any] = {}

    @model_validator(mode="after")
    def _defaults_well_formed(self) -> "ApiSettings":
        for field in ("region", "instance_type"):
            if message := problem(field, getattr(self, f"default_{field}")):
                raise ValueError(f"default_{field}: {message}")
        found = placement_problem(self.offered(), self.default_region, self.default_instance_type)
        if found is not None:
            raise ValueError(f"default_region, default_instance_type: {found}")
        return self

    def offered(self) -> Mapping[str, RegionOffer]:
        return offered(self.regions, self.default_region)

    def rate_limit_storage(self) -> str:
        return self.api_rate_limit_storage or self.redis_url

    def jwks_url(self) -> str:
        return self.api_jwks_url or self.api_oidc_issuer.rstrip("/") + "/.well-known/jwks.json"
