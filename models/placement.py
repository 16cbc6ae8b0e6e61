"""Where nodes may run and on what: the configured regions (FLEET_REGIONS) and, in each,
the instance types that may be asked for. The API and `fleet node create` both ask
placement_problem before a node row is written, so nobody launches a p5.48xlarge or picks
a region the fleet has no image in by naming it."""

from collections.abc import Mapping
from typing import Final

from pydantic import BaseModel, Field, field_validator

from models.formats import problem

# The fleet's documented default type (FLEET_DEFAULT_INSTANCE_TYPE) and one size up. The
# node daemon's own docs (rgb-lightning-node) recommend no instance size; a node is one
# Rust daemon with its LDK and RGB state, which t3.small (2 vCPU, 2 GiB) carries.
DEFAULT_INSTANCE_TYPES: Final = ("t3.small", "t3.medium")


class RegionOffer(BaseModel):
    """What may be asked for in one configured region (FLEET_REGIONS' "instance_types")."""

    instance_types: tuple[str, ...] = Field(default=DEFAULT_INSTANCE_TYPES, min_length=1)

    @field_validator("instance_types")
    @classmethod
    def _well_formed(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for instance_type in value:
            if message := problem("instance_type", instance_type):
                raise ValueError(message)
        return value


def offered(regions: Mapping[str, RegionOffer], default_region: str) -> Mapping[str, RegionOffer]:
    """The configured regions; with none configured, the default region and default types."""
    return regions or {default_region: RegionOffer()}


def placement_problem(
    regions: Mapping[str, RegionOffer], region: str, instance_type: str
) -> str | None:
    """A one-line reason why a node may not be placed so, or None when it may."""
    offer = regions.get(region)
    if offer is None:
        return f"region {region!r} is not one of the fleet's regions: {', '.join(sorted(regions))}"
    if instance_type not in offer.instance_types:
        allowed = ", ".join(offer.instance_types)
        return f"instance type {instance_type!r} is not offered in {region}: {allowed}"
    return None
