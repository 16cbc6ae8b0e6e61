from tests.conftest import add_nodes, fetch


def test_services_come_up(db_url: str) -> None:
    add_nodes(db_url, ["ok-a"])
    assert fetch(db_url, "SELECT state FROM nodes") == [("instance",)]
