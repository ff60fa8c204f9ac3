"""Validate an OpenAPI document (a file, or a URL) as OpenAPI 3.1.

Run with the Python of target/venv-schemathesis (scripts/fuzz-api.sh does): it uses the
official OpenAPI 3.1 schema (OpenAPI Initiative, 2022-10-07) that schemathesis ships, and
jsonschema-rs, to check
- the document against that schema;
- every Schema Object in it (components and inline) against the JSON Schema 2020-12 meta-schema,
  which the OpenAPI schema leaves unchecked;
- that every local `$ref` resolves.
Exits non-zero, naming each problem, when the document is not valid.
"""

import json
import sys
import urllib.request

import jsonschema_rs
from schemathesis.specs.openapi import definitions


def load(location):
    if location.startswith(("http://", "https://")):
        with urllib.request.urlopen(location, timeout=30) as response:
            return json.load(response)
    with open(location, encoding="utf-8") as file:
        return json.load(file)


def walk(node, path):
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}/{i}")


def resolve(doc, ref):
    node = doc
    for part in ref.lstrip("#/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def schema_objects(doc):
    """Every Schema Object: component schemas and the `schema` of parameters, headers and
    media types."""
    for name, schema in doc.get("components", {}).get("schemas", {}).items():
        yield f"#/components/schemas/{name}", schema
    for path, node in walk(doc, "#"):
        if isinstance(node, dict) and isinstance(node.get("schema"), dict):
            if "/components/schemas/" not in path:
                yield f"{path}/schema", node["schema"]


def main():
    doc = load(sys.argv[1])
    problems = []
    if not str(doc.get("openapi", "")).startswith("3.1."):
        problems.append(f"openapi is {doc.get('openapi')!r}, not 3.1.x")
    validator = definitions.OPENAPI_31_VALIDATOR
    for error in validator.iter_errors(doc):
        problems.append(f"OpenAPI 3.1 schema: {error.message} at {list(error.instance_path)}")
    for path, schema in schema_objects(doc):
        if not jsonschema_rs.meta.is_valid(schema):
            try:
                jsonschema_rs.meta.validate(schema)
            except Exception as error:  # noqa: BLE001 - report whatever the validator says
                problems.append(f"{path}: not a valid JSON Schema 2020-12: {error}")
    for path, node in walk(doc, "#"):
        if isinstance(node, dict) and isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            if not ref.startswith("#/") or resolve(doc, ref) is None:
                problems.append(f"{path}: unresolved $ref {ref}")
    if problems:
        print(f"{sys.argv[1]} is not a valid OpenAPI 3.1 document:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        sys.exit(1)
    operations = sum(
        1
        for item in doc.get("paths", {}).values()
        for method in item
        if method in {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    )
    print(f"valid OpenAPI {doc['openapi']}: {len(doc.get('paths', {}))} paths, {operations} operations")


if __name__ == "__main__":
    main()
