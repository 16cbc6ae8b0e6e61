"""The fleet's own id, made with its database: it tags every instance and seeds every
ClientToken (jobs/ec2.py), so that fleets sharing an AWS account never touch each other's."""

from sqlalchemy import Connection

from models.queries import query


def fleet_id(connection: Connection) -> str:
    return str(connection.execute(query("fleet_id")).scalar_one())
