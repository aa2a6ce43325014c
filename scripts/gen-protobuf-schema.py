#!/usr/bin/env python3
"""Writes the protobuf field table the API emulator decodes request bodies with.

kubectl and Helm send built-in kinds as `application/vnd.kubernetes.protobuf`. The emulator stores
JSON, so it turns the protobuf message into the JSON a real API server would have decoded. The
message layouts (field numbers, wire types, nested message types) come from the `k8s-pb` crate's
generated source, the JSON field names from `k8s-openapi`'s (both crates are dependencies of the
workspace, so `cargo metadata` finds their sources). The table covers every message reachable
from the kinds listed in ROOTS.

    python3 scripts/gen-protobuf-schema.py          # rewrite e2e/src/apiserver/protobuf/schema.json
    python3 scripts/gen-protobuf-schema.py --check  # fail if the committed file is stale
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "e2e/src/apiserver/protobuf/schema.json"

# The packages whose kinds (messages with `metadata` of type ObjectMeta) are roots, plus the
# request options clients send as bodies.
ROOT_PACKAGES = [
    "api.core.v1",
    "api.coordination.v1",
    "api.discovery.v1",
    "api.events.v1",
    "api.apps.v1",
    "api.batch.v1",
    "api.rbac.v1",
    "api.policy.v1",
    "api.networking.v1",
    "api.scheduling.v1",
]
EXTRA_ROOTS = ["apimachinery.pkg.apis.meta.v1.DeleteOptions", "apimachinery.pkg.runtime.Unknown"]

FIELD_RE = re.compile(r"#\[prost\((?P<attr>[^\]]*)\)\]\s*pub (?P<name>r#\w+|\w+):")
STRUCT_RE = re.compile(r"^pub struct (\w+) \{(.*?)^\}", re.M | re.S)


def crate_src(name: str, metadata: dict) -> Path:
    for package in metadata["packages"]:
        if package["name"] == name:
            return Path(package["manifest_path"]).parent / "src"
    sys.exit(f"crate {name} not found in cargo metadata")


def resolve(module: str, ty: str) -> str:
    """The full name of a message type referenced from `module` (prost's relative Rust path)."""
    parts = module.split(".")
    segments = ty.split("::")
    while segments and segments[0] == "super":
        parts.pop()
        segments.pop(0)
    return ".".join(parts + segments)


def field_type(body: str, start: int) -> str:
    """The Rust type from `start` up to the comma that ends the field (outside angle brackets)."""
    depth = 0
    for i in range(start, len(body)):
        c = body[i]
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "," and depth == 0:
            return body[start:i].strip()
    return body[start:].strip()


def inner_type(ty: str) -> str:
    ty = re.sub(r"\s+", "", ty)
    for wrapper in ("::core::option::Option<", "::prost::alloc::vec::Vec<", "::prost::alloc::boxed::Box<"):
        while ty.startswith(wrapper):
            ty = ty[len(wrapper) : -1]
    return ty


def parse_messages(src: Path) -> dict:
    messages = {}
    for file in sorted(src.rglob("mod.rs")):
        module = ".".join(file.parent.relative_to(src).parts)
        text = file.read_text()
        for struct in STRUCT_RE.finditer(text):
            fields = []
            body = struct.group(2)
            for f in FIELD_RE.finditer(body):
                attr = f.group("attr")
                ty = field_type(body, f.end())
                tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
                kind = attr.split(",")[0].split("=")[0].strip()
                name = f.group("name").removeprefix("r#")
                label = "rep" if "repeated" in attr else "opt"
                ref = None
                if kind == "btree_map":
                    value = re.search(r'btree_map = "string, (\w+)"', attr).group(1)
                    kind = "map"
                    if value == "message":
                        ref = resolve(module, re.sub(r"\s+", "", ty).rstrip(">").rstrip(",").rsplit(",", 1)[1])
                    else:
                        ref = value
                elif kind == "message":
                    ref = resolve(module, inner_type(ty))
                fields.append({"tag": tag, "name": name, "kind": kind, "label": label, "ref": ref})
            messages[f"{module}.{struct.group(1)}" if module else struct.group(1)] = fields
    return messages


def json_names(src: Path) -> tuple[dict, dict]:
    """From k8s-openapi's deserializers: (type name, Rust field) -> JSON name, and Rust field ->
    every JSON name it has in any type."""
    per_type, anywhere = {}, {}
    version_dirs = sorted(p for p in src.iterdir() if p.name.startswith("v1_"))
    pattern = re.compile(r'"([A-Za-z0-9$_-]+)" => Field::Key_(\w+)')
    for file in (version_dirs[-1] if version_dirs else src).rglob("*.rs"):
        text = file.read_text()
        owner = re.search(r"^pub struct (\w+)", text, re.M)
        for json_name, rust in pattern.findall(text):
            anywhere.setdefault(rust, set()).add(json_name)
            if owner:
                per_type[(owner.group(1).lower(), rust)] = json_name
    return per_type, anywhere


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def main() -> None:
    check = "--check" in sys.argv
    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    messages = parse_messages(crate_src("k8s-pb", metadata))
    per_type, names = json_names(crate_src("k8s-openapi", metadata))

    meta = "apimachinery.pkg.apis.meta.v1.ObjectMeta"
    roots = [
        m
        for m, fields in messages.items()
        if m.rsplit(".", 1)[0] in ROOT_PACKAGES and any(f["name"] == "metadata" and f["ref"] == meta for f in fields)
        and not m.endswith("List")
    ] + EXTRA_ROOTS
    seen, todo = set(), list(roots)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        if m not in messages:
            sys.exit(f"message {m} not found in k8s-pb")
        seen.add(m)
        todo.extend(f["ref"] for f in messages[m] if f["kind"] in ("message", "map") and "." in (f["ref"] or ""))

    unmapped = []
    table = {}
    for m in sorted(seen):
        rows = []
        for f in messages[m]:
            json_name = per_type.get((m.rsplit(".", 1)[1].lower(), f["name"]))
            short = m.rsplit(".", 1)[1].lower()
            if json_name is None:
                # prost and k8s-openapi split some names differently (pod_cid_rs / pod_cidrs).
                squashed = f["name"].replace("_", "")
                json_name = next((j for (t, r), j in per_type.items() if t == short and r.replace("_", "") == squashed), None)
            if json_name is None and f["kind"] == "message" and snake(f["ref"].rsplit(".", 1)[1]) == f["name"]:
                # A Go struct embedded with `json:",inline"`: its fields belong to the parent.
                rows.append([f["tag"], "", "message", "inline", f["ref"]])
                continue
            if json_name is None:
                candidates = names.get(f["name"], set())
                if len(candidates) == 1:
                    json_name = next(iter(candidates))
                elif not candidates:
                    json_name = camel(f["name"])
                    unmapped.append(f"{m}.{f['name']} -> {json_name}")
                else:
                    sys.exit(f"{m}.{f['name']}: ambiguous JSON names {sorted(candidates)}: add an override")
            rows.append([f["tag"], json_name, f["kind"], f["label"], f["ref"]])
        table[m] = rows
    text = json.dumps({"roots": sorted(roots), "messages": table}, indent=None, separators=(",", ":"), sort_keys=True)
    text = text.replace('],"', '],\n"') + "\n"
    if unmapped:
        print("fields k8s-openapi does not know (camelCase of the Rust name used):", file=sys.stderr)
        for u in unmapped:
            print("  " + u, file=sys.stderr)
    if check:
        if not OUT.exists() or OUT.read_text() != text:
            sys.exit(f"{OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT} is stale: run python3 scripts/gen-protobuf-schema.py")
        print(f"{len(table)} messages, current")
        return
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(table)} messages, {len(roots)} roots)")


if __name__ == "__main__":
    os.chdir(Path(__file__).resolve().parent.parent)
    main()
