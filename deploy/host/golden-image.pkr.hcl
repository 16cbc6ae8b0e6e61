# The RLN host golden image: Debian 12 with the host agent (rln-hostctl), the node's
# systemd unit, its user and directories, and the fleet's SSH user. The node binary is
# not baked in: the fleet installs a release with `rln-hostctl install`. Its root snapshot
# is encrypted, so every node's boot volume is; each instance makes its own machine-id.
#
# Needs Packer 1.7 or newer (HCL2 with `packer init` and required_plugins).
#
#   packer init deploy/host/golden-image.pkr.hcl
#   packer build -var region=eu-west-1 -var network=testnet deploy/host/golden-image.pkr.hcl
#
# Put the AMI id it prints into the fleet's regions config (FLEET_REGIONS .ami).

packer {
  required_version = ">= 1.7.0"
  required_plugins {
    amazon = {
      version = ">= 1.3.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}

variable "region" {
  type    = string
  default = "eu-west-1"
}

variable "instance_type" {
  type    = string
  default = "t3.small"
}

variable "network" {
  type        = string
  default     = "testnet"
  description = "Written to /etc/rln/node.env as NETWORK"
  validation {
    condition     = contains(["regtest", "testnet", "testnet4", "signet", "mainnet"], var.network)
    error_message = "The network must be regtest, testnet, testnet4, signet or mainnet."
  }
}

variable "fleet_ssh_user" {
  type        = string
  default     = "fleet"
  description = "The user the fleet logs in as (FLEET_SSH_USER); it may sudo only rln-hostctl"
}

locals {
  stamp = formatdate("YYYYMMDD-hhmmss", timestamp())
  files = ["rln-hostctl", "rgb-lightning-node.service", "install-host.sh", "90-rln-fleet.cfg"]
}

source "amazon-ebs" "rln_host" {
  region        = var.region
  instance_type = var.instance_type
  ami_name      = "rln-host-${var.network}-${local.stamp}"
  ssh_username  = "admin"
  imds_support  = "v2.0"

  # The AMI's snapshot is encrypted (with the account's EBS key unless kms_key_id is
  # set), so every volume launched from it is too; the build's own volume is encrypted
  # from the start, so the unencrypted copy never holds the installed host.
  encrypt_boot = true
  launch_block_device_mappings {
    device_name           = "/dev/xvda"
    volume_size           = 20
    volume_type           = "gp3"
    encrypted             = true
    delete_on_termination = true
  }

  source_ami_filter {
    filters = {
      name                = "debian-12-amd64-*"
      architecture        = "x86_64"
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = ["136693071363"] # Debian's official account
    most_recent = true
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  tags = {
    Name       = "rln-host"
    role       = "rln-host-golden-image"
    network    = var.network
    source_ami = "{{ .SourceAMI }}"
  }
}

build {
  sources = ["source.amazon-ebs.rln_host"]

  provisioner "shell" {
    inline = ["mkdir -p /tmp/rln-host"]
  }

  provisioner "file" {
    sources     = [for name in local.files : "${path.root}/${name}"]
    destination = "/tmp/rln-host/"
  }

  provisioner "shell" {
    inline = [
      # apt must not race the build instance's own first-boot cloud-init; only the
      # waiting matters here, not how that boot went.
      "cloud-init status --wait > /dev/null || true",
      "sudo env RLN_NETWORK=${var.network} FLEET_SSH_USER=${var.fleet_ssh_user} bash /tmp/rln-host/install-host.sh /tmp/rln-host",
      "sudo rm -rf /tmp/rln-host",
      # Every instance of the image then boots as a first boot: new SSH host keys (the
      # fleet pins them per host) and the launch's key pair on the fleet's user.
      "sudo cloud-init clean --logs",
      # One machine-id per host, not the build's for all of them: systemd makes a new one
      # on the first boot of an empty file (journald, DHCP client ids, and the like).
      "sudo truncate -s 0 /etc/machine-id",
      # D-Bus reads its own copy first: a file there (a symlink to /etc's is fine) goes.
      "sudo find /var/lib/dbus -maxdepth 1 -name machine-id -type f -delete",
      # The build user (full sudo, Packer's throwaway key) must not outlive the build in
      # any usable form: its sudo rule and its key go, last, as they are still in use.
      "sudo rm -f /etc/sudoers.d/90-cloud-init-users",
      "rm -f ~/.ssh/authorized_keys",
    ]
  }
}
