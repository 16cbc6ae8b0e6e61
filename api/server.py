"""`fleet api`: the API served by uvicorn, configured from the environment."""

import uvicorn
from pydantic import ValidationError

from api.app import create_app
from api.deps import ACTOR_PREFIX
from api.settings import ApiSettings
from models.session import engine_for


def load_settings() -> ApiSettings:
    try:
        return ApiSettings()
    except ValidationError as exc:
        lines = [
            f"  FLEET_{str(error['loc'][0]).upper()}: {error['msg']}" for error in exc.errors()
        ]
        raise SystemExit(
            "fleet api: bad configuration (api/README.md):\n" + "\n".join(lines)
        ) from None


def serve(host: str, port: int) -> None:
    settings = load_settings()
    engine = engine_for(settings.database_url, ACTOR_PREFIX)
    # log_config=None: keep the logging the command line configured (JSON in containers).
    uvicorn.run(create_app(settings, engine), host=host, port=port, log_config=None)
