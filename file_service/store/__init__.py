"""The file service's database: the :class:`FileStore` role and its SQL implementation."""

from __future__ import annotations

from file_service.store.interface import After, FileStore
from file_service.store.sql import SqlFileStore

__all__ = ["After", "FileStore", "SqlFileStore"]
