"""Ansible plugins that pullboot puts on the play's plugin paths (loaded by ansible, by path)."""
