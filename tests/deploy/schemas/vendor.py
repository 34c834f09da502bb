"""Vendor one version's published OpenAPI v3 schema out of a CustomResourceDefinition, for offline tests.

    git --git-dir=KSERVE.git show v0.20.0:config/crd/full/serving.kserve.io_inferenceservices.yaml \\
      | python tests/deploy/schemas/vendor.py --repo kserve/kserve --ref v0.20.0 --commit SHA \\
          --path config/crd/full/serving.kserve.io_inferenceservices.yaml --version v1beta1 \\
      > tests/deploy/schemas/kserve-inferenceservice-v1beta1.json

Keeps ``spec.versions[name=VERSION].schema.openAPIV3Schema`` as published, less every ``description``
(most of the size) and the ``status`` subtree (the cluster writes it, manifests never do). The header names
where it came from. Strictness (no unknown fields) is added by the tests, not written here.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml


def without_descriptions(node: Any) -> Any:
    """The schema with every ``description`` string dropped (a property named description stays)."""
    if isinstance(node, dict):
        return {k: without_descriptions(v) for k, v in node.items()
                if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [without_descriptions(v) for v in node]
    return node


def extract(crd: dict[str, Any], version: str) -> dict[str, Any]:
    """One served version's openAPIV3Schema, trimmed as the module docstring says."""
    (found,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = without_descriptions(found["schema"]["openAPIV3Schema"])
    schema["properties"].pop("status", None)
    return schema


def main() -> int:
    """Read a CRD on stdin, write the vendored JSON on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--repo", "--ref", "--commit", "--path", "--version"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    crd = yaml.load(sys.stdin, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    vendored = {
        "source": {"repo": f"https://github.com/{args.repo}", "ref": args.ref, "commit": args.commit,
                   "path": args.path, "crd": crd["metadata"]["name"], "version": args.version,
                   "changes": "description fields and the status subtree removed"},
        "openAPIV3Schema": extract(crd, args.version),
    }
    json.dump(vendored, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
