"""The instance simulator: boot a local "instance" exactly as EC2 would, with no AWS.

``pullboot sim boot`` builds (once, then cached) a systemd container image holding only
pullboot, installed by the ``pullboot_agent`` role as an AMI build would; starts an IMDSv2
emulator (:mod:`.imds`) with the instance's identity, tags and user-data, and a moto S3
server (:mod:`.s3`) when the source is an S3 bundle; then boots a container from the image,
where the enabled ``pullboot.service`` runs at boot as it would on EC2.

Everything on the host listens on 127.0.0.1 only. The container has its own network
namespace (slirp4netns) and reaches the host's loopback through :data:`HOST_FROM_INSTANCE`;
its ports are published on 127.0.0.1 only.

Modules: :mod:`.spec` (what to launch), :mod:`.image` (the "AMI"), :mod:`.servers` (the
emulators, in a small daemon that outlives the command), :mod:`.instance` (podman),
:mod:`.simulator` (the commands the CLI calls).
"""

from __future__ import annotations

from typing import Final

# slirp4netns with allow_host_loopback: the container's view of the host's 127.0.0.1.
HOST_FROM_INSTANCE: Final = "10.0.2.2"
NETWORK: Final = "slirp4netns:allow_host_loopback=true"
SIM_EXTRA_HINT: Final = "pip install 'pullboot[sim]'"


