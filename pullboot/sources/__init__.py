"""Playbook sources behind one interface, chosen by URL (see :mod:`.base`).

Importing this package registers every kind; the heavy libraries each kind
needs (GitPython, boto3) are imported only when a source of that kind fetches.
"""

from pullboot.sources import dirsource, git, s3
from pullboot.sources.base import Source, SourceSpec, create, detect_kind, kinds, redact_url

__all__ = ["Source", "SourceSpec", "create", "detect_kind", "dirsource", "git", "kinds",
           "redact_url", "s3"]
