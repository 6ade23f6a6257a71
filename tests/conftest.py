"""Shared pytest set-up. Each harness lives in its own fixtures_*.py module, listed here."""
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"

pytest_plugins: list[str] = [
    "fixtures_images",
    "fixtures_repo",
    "fixtures_vcsim",
    "fixtures_vddk",
    "fixtures_mount",
    "fixtures_vsphere",
    "fixtures_restore",
]
