"""The fleet's identity in EC2: a ClientToken per fleet, node and launch generation that
fits EC2's 64 ASCII characters whatever FLEET_TAG says, and ownership by the fleet id tag."""

import itertools
import re

from jobs.ec2 import FLEET_ID_TAG, NODE_ID_TAG, Instance, client_token

FLEET_IDS = ["0" * 32, "f" * 32, "0123456789abcdef" * 2]
NODE_IDS = [1, 11, 9_223_372_036_854_775_807]  # up to the bigint maximum
GENERATIONS = [0, 1, 2_147_483_647]  # up to the integer maximum


def test_client_tokens_fit_ec2_and_never_collide() -> None:
    tokens = [
        client_token(*combination)
        for combination in itertools.product(FLEET_IDS, NODE_IDS, GENERATIONS)
    ]
    assert all(len(t) <= 64 and re.fullmatch(r"[0-9a-f-]+", t) for t in tokens)
    assert len(set(tokens)) == len(tokens)
    # Node 1 generation 11 and node 11 generation 1 are different requests.
    assert client_token(FLEET_IDS[0], 1, 11) != client_token(FLEET_IDS[0], 11, 1)


def test_an_instance_belongs_only_to_the_fleet_and_node_it_is_tagged_for() -> None:
    ours = Instance("i-1", "running", None, None, {FLEET_ID_TAG: "a" * 32, NODE_ID_TAG: "7"})
    assert ours.belongs_to("a" * 32, 7)
    assert not ours.belongs_to("b" * 32, 7)  # another fleet's node 7
    assert not ours.belongs_to("a" * 32, 8)
    untagged = Instance("i-2", "running", None, None, {NODE_ID_TAG: "7"})
    assert not untagged.belongs_to("a" * 32, 7)
