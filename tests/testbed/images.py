"""The app images the tests deploy: the demo's own (see watchdogd.demo.images)."""

from watchdogd.demo.images import (
    APP_IMAGES,
    APP_V1,
    APP_V2,
    COMMON_DEFAULTS,
    HASH_LABEL,
    IMAGE_DEFAULTS,
    IMAGE_REPOSITORY,
    PRISMA_LOG_LINE,
    VERSION_LABEL,
    AppBehaviour,
    build_root,
    ensure_app_images,
    image_changes,
    root_hash,
    tar_root,
    version_hash,
)

__all__ = [
    "APP_IMAGES",
    "APP_V1",
    "APP_V2",
    "COMMON_DEFAULTS",
    "HASH_LABEL",
    "IMAGE_DEFAULTS",
    "IMAGE_REPOSITORY",
    "PRISMA_LOG_LINE",
    "VERSION_LABEL",
    "AppBehaviour",
    "build_root",
    "ensure_app_images",
    "image_changes",
    "root_hash",
    "tar_root",
    "version_hash",
]
