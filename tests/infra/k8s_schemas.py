"""The KubeRay CRD schemas (vendored from the KubeRay release in ``schemas/``) and Kubernetes' own
(``kubernetes-validate``'s bundled OpenAPI schemas), for validating ``infra/k8s/*.yaml`` offline.

A CRD's schema is validated *strictly*: every object that lists its ``properties`` gets
``additionalProperties: false`` (unless the CRD says to keep unknown fields), because the API server
silently prunes unknown fields of a structural CRD — a misspelled or too-new field (``authOptions``
on an operator older than 1.6) would vanish without an error, and the protection with it.

Regenerate the vendored files from a KubeRay checkout (Apache-2.0, see ``schemas/README.md``)::

    python -m tests.infra.k8s_schemas /path/to/kuberay   # at the tag named in schemas/README.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

SCHEMAS = Path(__file__).with_name("schemas")
KINDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs"}
#: the Kubernetes minor whose schemas kubernetes-validate checks core kinds against (EKS supports it)
KUBERNETES_VERSION = "1.33"


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _strict(node: Any) -> Any:
    """The CRD schema as a JSON schema that refuses unknown fields (what pruning would drop)."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def crd_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / f"{KINDS[kind]}.json").read_text())
    return _strict(schema)


def crd_errors(doc: dict[str, Any]) -> list[str]:
    """Every schema violation of a RayCluster/RayJob document, as ``path: message`` lines."""
    import jsonschema

    validator = jsonschema.Draft7Validator(crd_schema(doc["kind"]))
    return sorted(
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator.iter_errors(doc)
    )


def core_errors(doc: dict[str, Any]) -> list[str]:
    """Violations of a core Kubernetes document (kubernetes-validate, strict: unknown fields too)."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(str(p) for p in e.path)}: {e.message}"]
    return []


def vendor(kuberay: Path) -> None:
    """Write ``schemas/<plural>.json`` from ``kuberay``'s CRDs (v1, descriptions dropped)."""
    for plural in KINDS.values():
        crd = yaml.safe_load(
            (kuberay / "ray-operator/config/crd/bases" / f"ray.io_{plural}.yaml").read_text()
        )
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = _strip(version["schema"]["openAPIV3Schema"])
        (SCHEMAS / f"{plural}.json").write_text(
            json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n"
        )


if __name__ == "__main__":
    vendor(Path(sys.argv[1]))
