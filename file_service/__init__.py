"""The file service: file metadata, with blobs on local disk or S3."""
