"""The golden image recipe, checked by its structure: Packer itself is not installable here
(no HashiCorp package source), so `packer validate` has not run on it."""

import re
from pathlib import Path

RECIPE = Path(__file__).resolve().parent.parent / "deploy" / "host" / "golden-image.pkr.hcl"


def block(text: str, header: str) -> str:
    """The body of the first HCL block opening with `header {`, braces balanced."""
    start = text.index(header + " {") + len(header) + 2
    depth = 1
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return text[start:end]
    raise AssertionError(f"unbalanced block {header}")


def settings(body: str) -> dict[str, str]:
    return dict(re.findall(r"^\s*(\w+)\s*=\s*(.+?)\s*$", body, re.MULTILINE))


def test_the_recipe_says_which_packer_it_needs() -> None:
    packer = settings(block(RECIPE.read_text(), "packer"))
    assert packer["required_version"] == '">= 1.7.0"'


def test_the_image_and_the_build_volume_are_encrypted() -> None:
    source = block(RECIPE.read_text(), 'source "amazon-ebs" "rln_host"')
    assert settings(source)["encrypt_boot"] == "true"
    volume = settings(block(source, "launch_block_device_mappings"))
    assert (volume["device_name"], volume["encrypted"]) == ('"/dev/xvda"', "true")
    assert settings(block(source, "metadata_options"))["http_tokens"] == '"required"'


def test_every_instance_of_the_image_makes_its_own_machine_id() -> None:
    build = block(RECIPE.read_text(), "build")
    steps = re.findall(r'^\s*"(.+)",\s*$', build, re.MULTILINE)
    assert "sudo truncate -s 0 /etc/machine-id" in steps
    assert "sudo find /var/lib/dbus -maxdepth 1 -name machine-id -type f -delete" in steps
    # After the installer, which may start services that read it.
    installer = next(i for i, s in enumerate(steps) if "install-host.sh" in s)
    assert steps.index("sudo truncate -s 0 /etc/machine-id") > installer
