"""Helpers that run the real servers of the integration tests.

Docker app images and containers (:mod:`.images`, :mod:`.containers`),
Prometheus and Alertmanager processes (:mod:`.prometheus`), throw-away
PostgreSQL databases (:mod:`.postgres`) and Redis key prefixes (:mod:`.redisdb`).
The servers themselves are installed and started by ``scripts/testbed.sh``.
"""

from tests.testbed.containers import (
    AppContainer,
    ContainerExited,
    ContainerRegistry,
    free_port,
    http_get,
    parse_metrics,
)
from tests.testbed.images import (
    APP_IMAGES,
    APP_V1,
    APP_V2,
    PRISMA_LOG_LINE,
    AppBehaviour,
    ensure_app_images,
)
from tests.testbed.postgres import create_database, drop_database, dsn_for
from tests.testbed.prometheus import AlertmanagerServer, PrometheusServer
from tests.testbed.redisdb import REDIS_URL, delete_prefix, new_prefix

__all__ = [
    "APP_IMAGES",
    "APP_V1",
    "APP_V2",
    "PRISMA_LOG_LINE",
    "REDIS_URL",
    "AlertmanagerServer",
    "AppBehaviour",
    "AppContainer",
    "ContainerExited",
    "ContainerRegistry",
    "PrometheusServer",
    "create_database",
    "delete_prefix",
    "drop_database",
    "dsn_for",
    "ensure_app_images",
    "free_port",
    "http_get",
    "new_prefix",
    "parse_metrics",
]
