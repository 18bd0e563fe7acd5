"""Errors of the blob stores.

::

    StorageError                 anything a blob store refuses or fails at
    ├── InvalidBlobKey           a key that is empty, too long or could leave the root
    ├── BlobNotFound             no blob under that key
    ├── InvalidRange             a read starting past the end, or a negative offset/length
    ├── BlobBusy                 another writer holds the blob (an upload's bytes on local disk)
    └── StorageUnavailable       the backend failed (disk, S3 endpoint); the cause is chained

Each backend translates its library's errors into these (``raise … from exc``), so no
botocore or OS error crosses the :class:`~file_service.storage.base.BlobStore` interface.
"""

from __future__ import annotations


class StorageError(Exception):
    """A blob store refused or failed at an operation."""


class InvalidBlobKey(StorageError):
    """The key is not a valid blob key (see :func:`file_service.storage.base.check_key`)."""


class BlobNotFound(StorageError):
    """No blob is stored under the key."""


class InvalidRange(StorageError):
    """The requested byte range does not fit the blob."""


class BlobBusy(StorageError):
    """Another writer, in this process or another, is writing the blob now
    (:meth:`~file_service.storage.base.AppendingBlobStore.appender`)."""


class StorageUnavailable(StorageError):
    """The backend failed; the library's error is the ``__cause__``."""
