"""`fleet api`: the API served by uvicorn, configured from the environment."""

import uvicorn

from api.app import create_app
from api.deps import ACTOR_PREFIX
from api.settings import ApiSettings
from models.session import engine_for


def serve(host: str, port: int) -> None:
    # A bad setting raises pydantic's ValidationError: `fleet` says which, in one line.
    settings = ApiSettings()
    engine = engine_for(settings.database_url, ACTOR_PREFIX)
    # log_config=None: keep the logging the command line configured (JSON in containers).
    uvicorn.run(create_app(settings, engine), host=host, port=port, log_config=None)
