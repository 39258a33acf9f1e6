"""pullboot: turn a plain machine image into any server at boot.

The boot job reads the instance's identity, resolves its role(s), fetches the
matching playbooks, runs them through ansible-runner and writes a report.
"""

__version__ = "0.1.0"
