#!/usr/bin/env python3
"""Packs static binaries into a docker-archive tarball (what `docker save` writes) that
`ctr images import` reads. One layer, deterministic bytes.

usage: mkimage.py OUT.tar REPO:TAG ENTRYPOINT SRC:DST [SRC:DST ...]
"""
import hashlib
import io
import json
import sys
import tarfile


def add(tar, name, data=None, mode=0o644, kind=tarfile.REGTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
    if data is not None:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def main():
    out, ref, entrypoint, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    if ":" not in ref.rsplit("/", 1)[-1] or ref.endswith(":latest"):
        sys.exit("mkimage.py: the image needs a version tag (never latest)")
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.USTAR_FORMAT) as t:
        add(t, "etc", mode=0o755, kind=tarfile.DIRTYPE)
        add(t, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        add(t, "etc/passwd", b"root:x:0:0:root:/:/nonexistent\nnobody:x:65534:65534:nobody:/:/nonexistent\n")
        add(t, "tmp", mode=0o1777, kind=tarfile.DIRTYPE)
        for spec in files:
            src, dst = spec.split(":", 1)
            with open(src, "rb") as f:
                add(t, dst.lstrip("/"), f.read(), mode=0o755)
    layer = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": [entrypoint], "Env": ["PATH=/"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "tests/cluster/node/mkimage.py"}],
    }
    config = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_dir = diff_id.split(":")[1]
    manifest = [{"Config": config_name, "RepoTags": [ref], "Layers": [layer_dir + "/layer.tar"]}]
    with tarfile.open(out, mode="w", format=tarfile.USTAR_FORMAT) as t:
        add(t, config_name, config)
        add(t, layer_dir, mode=0o755, kind=tarfile.DIRTYPE)
        add(t, layer_dir + "/layer.tar", layer)
        add(t, "manifest.json", json.dumps(manifest, separators=(",", ":")).encode())


if __name__ == "__main__":
    main()
