"""Playbook sources behind one interface, chosen by URL (see :mod:`.base`).

Importing this package registers every kind; boto3 is imported only when an
S3 source fetches. Git sources run ``git`` itself in a process group of their
own (:mod:`.git`): GitPython cannot bound a command by the run's deadline and
cancel event, nor kill its children, so it is not on the fetch path.
"""

from pullboot.sources import dirsource, git, s3
from pullboot.sources.base import Source, SourceSpec, create, detect_kind, kinds

__all__ = ["Source", "SourceSpec", "create", "detect_kind", "dirsource", "git", "kinds", "s3"]
