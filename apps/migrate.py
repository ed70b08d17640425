"""Create the sample apps' schema over DIRECT_URL, then exit: a migration Job's command.

    python -m apps.migrate

Exit codes: 0 done, 1 the database refused, 2 a setting is missing or malformed.
"""

from __future__ import annotations

import logging
import sys

from apps import db

log = logging.getLogger("apps.migrate")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = db.load_settings()
        if not settings.direct_url:
            raise db.SettingsError("DIRECT_URL is not set: migrations run on the direct URL")
        db.ensure_schema(settings)
    except Exception as exc:
        return db.startup_exit_code(exc, log)
    log.info("schema ready (over DIRECT_URL)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
