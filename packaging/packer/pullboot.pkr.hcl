# A pullboot machine image (AMI): Debian 12 plus pullboot, and nothing else.
#
# The Bootstrap pattern: the image carries only the bootstrapper; each instance launched from it
# configures itself at boot (pullboot.service), from the playbooks its tags or user-data name.
# The image is baked by the same role that builds the local simulator's image
# (`pullboot sim image`): playbooks/agent.yml -> roles/pullboot_agent.
#
#   pip wheel --no-deps -w dist .                     # pullboot's wheel, from this checkout
#   cd packaging/packer
#   packer init .                                     # the amazon and ansible plugins
#   packer build -var "pullboot_wheel=$PWD/../../dist/pullboot-0.1.0-py3-none-any.whl" .
#
# The controller needs ansible-playbook on PATH (the repo's .venv has it: `make venv`) and AWS
# credentials allowed to run a builder instance and register the AMI. Launch instances from the
# AMI with IMDSv2 and instance metadata tags enabled; packaging/cloud-init/ has user-data.

packer {
  required_version = ">= 1.10.0"
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
    ansible = {
      source  = "github.com/hashicorp/ansible"
      version = ">= 1.1.1"
    }
  }
}

# -- what to build from -----------------------------------------------------------------------

variable "region" {
  type        = string
  default     = "eu-west-1"
  description = "Region the builder instance runs in and the AMI is registered in."
}

variable "instance_type" {
  type        = string
  default     = "t3.small"
  description = "Builder instance type (the AMI runs on any type of the same architecture)."
}

variable "architecture" {
  type        = string
  default     = "x86_64"
  description = "x86_64 or arm64; must match instance_type (e.g. t4g.small for arm64)."
  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "The architecture must be x86_64 or arm64."
  }
}

variable "source_ami_name" {
  type        = string
  default     = "debian-12-*"
  description = "Name filter of the base AMI; the newest match is used."
}

variable "source_ami_owner" {
  type        = string
  default     = "136693071363"
  description = "Account that owns the base AMI (136693071363: Debian's official images)."
}

variable "ssh_username" {
  type        = string
  default     = "admin"
  description = "Login user of the base AMI (admin on Debian's images)."
}

variable "subnet_id" {
  type        = string
  default     = null
  description = "Subnet for the builder (default: the default VPC's). Needs a route to PyPI."
}

# -- what goes into the image -------------------------------------------------------------------

variable "pullboot_wheel" {
  type        = string
  description = "Path on this machine to pullboot's wheel (pip wheel --no-deps -w dist .)."
}

variable "pip_extra_args" {
  type        = string
  default     = ""
  description = "Extra pip arguments for installing pullboot's dependencies, e.g. an index URL."
}

variable "pullboot_source" {
  type        = string
  default     = ""
  description = "Default playbook source baked into /etc/pullboot/pullboot.yml; empty: every launch names it (user-data or the pullboot:source tag)."
}

variable "pullboot_ref" {
  type        = string
  default     = ""
  description = "Default git ref baked into the config; empty: the remote's HEAD or the launch's."
}

variable "pullboot_config_extra" {
  type        = string
  default     = "{}"
  description = "More /etc/pullboot/pullboot.yml settings as a JSON object, e.g. {\"keep_runs\": 50, \"imds\": {\"budget\": 60}}."
}

variable "timer_interval" {
  type        = string
  default     = "30min"
  description = "Interval of pullboot.timer's periodic convergence (a systemd time span)."
}

# -- what comes out -----------------------------------------------------------------------------

variable "ami_name_prefix" {
  type        = string
  default     = "pullboot-debian-12"
  description = "AMI name prefix; a UTC timestamp is appended."
}

variable "ami_users" {
  type        = list(string)
  default     = []
  description = "Other accounts allowed to launch the AMI."
}

variable "tags" {
  type        = map(string)
  default     = {}
  description = "Extra tags on the AMI and its snapshot."
}

locals {
  stamp = formatdate("YYYYMMDD-hhmmss", timestamp())
  repo  = "${path.root}/../.."
  agent_vars = {
    pullboot_agent_package        = var.pullboot_wheel
    pullboot_agent_pip_extra_args = var.pip_extra_args
    pullboot_agent_source         = var.pullboot_source
    pullboot_agent_ref            = var.pullboot_ref
    pullboot_agent_config_extra   = jsondecode(var.pullboot_config_extra)
    pullboot_agent_timer_interval = var.timer_interval
    # Nothing runs while the image is baked: the units run on the instances' boots.
    pullboot_agent_timer_start = false
  }
}

source "amazon-ebs" "pullboot" {
  region        = var.region
  instance_type = var.instance_type
  subnet_id     = var.subnet_id
  ssh_username  = var.ssh_username

  source_ami_filter {
    filters = {
      name                = var.source_ami_name
      architecture        = var.architecture
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = [var.source_ami_owner]
    most_recent = true
  }

  # The builder itself speaks IMDSv2 only; instances launched from the AMI default to it too.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  imds_support = "v2.0"

  ami_name        = "${var.ami_name_prefix}-${local.stamp}"
  ami_description = "Debian 12 with pullboot: configures itself at boot from its tags and user-data"
  ami_users       = var.ami_users
  encrypt_boot    = true

  tags = merge(var.tags, {
    Name               = "${var.ami_name_prefix}-${local.stamp}"
    "pullboot:version" = regex("pullboot-([^-]+)-", basename(var.pullboot_wheel))[0]
  })
  snapshot_tags = var.tags
}

build {
  name    = "pullboot"
  sources = ["source.amazon-ebs.pullboot"]

  # The same playbook and role as the local image: pullboot in /opt/pullboot (a venv), its
  # config, pullboot.service (boot run) and pullboot.timer enabled, not started.
  provisioner "ansible" {
    playbook_file = "${local.repo}/playbooks/agent.yml"
    user          = var.ssh_username
    use_proxy     = false
    ansible_env_vars = [
      "ANSIBLE_ROLES_PATH=${local.repo}/roles",
      "ANSIBLE_HOST_KEY_CHECKING=False",
      "ANSIBLE_NOCOLOR=1",
    ]
    extra_arguments = [
      "--become",
      "--extra-vars", "ansible_python_interpreter=/usr/bin/python3",
      "--extra-vars", jsonencode(local.agent_vars),
    ]
  }

  # An image, not a machine: each instance must start as new (its own machine id, cloud-init
  # running again, no pullboot state from the builder).
  provisioner "shell" {
    execute_command = "sudo sh -c '{{ .Vars }} {{ .Path }}'"
    inline = [
      "test -x /opt/pullboot/bin/pullboot",
      "systemctl is-enabled pullboot.service pullboot.timer",
      "rm -rf /var/lib/pullboot/* /run/pullboot",
      "cloud-init clean --logs --machine-id",
    ]
  }

  post-processor "manifest" {
    output     = "packer-manifest.json"
    strip_path = true
  }
}
