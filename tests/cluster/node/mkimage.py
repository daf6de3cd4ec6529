#!/usr/bin/env python3
"""Packs binaries into a docker-archive tarball (what `docker save` writes) that
`ctr images import` reads. One layer, deterministic bytes.

usage: mkimage.py [--libs] [--env K=V ...] OUT.tar REPO:TAG ENTRYPOINT SRC:DST [SRC:DST ...]

--libs adds the shared libraries `ldd` lists for each SRC (loader included) at the paths ldd
prints, so dynamically linked host binaries (redis-server, curl, busybox) run in the image.
--env sets the image's environment (default PATH=/:/bin).
"""
import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile


def shared_libraries(binary):
    """The absolute library paths ldd lists for binary; none for a static one."""
    proc = subprocess.run(["ldd", binary], capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    if "not a dynamic executable" in text or "statically linked" in text:
        return []
    if proc.returncode != 0:
        sys.exit(f"mkimage.py: ldd {binary} failed:\n{text}")
    libs = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            sys.exit(f"mkimage.py: {binary}: a library is missing: {line}")
        path = line.split("=>", 1)[1] if "=>" in line else line
        path = path.strip().split(" (", 1)[0].strip()
        if path.startswith("/"):
            libs.append(path)
    return libs


def add(tar, name, data=None, mode=0o644, kind=tarfile.REGTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, 0, 0, 0
    if data is not None:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--libs", action="store_true")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("out")
    ap.add_argument("ref")
    ap.add_argument("entrypoint")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    out, ref, entrypoint = args.out, args.ref, args.entrypoint
    files = [spec.split(":", 1) for spec in args.files]
    if args.libs:
        extra = {lib for src, _ in files for lib in shared_libraries(src)}
        taken = {dst.lstrip("/") for _, dst in files}
        files += [[lib, lib] for lib in sorted(extra) if lib.lstrip("/") not in taken]
    if ":" not in ref.rsplit("/", 1)[-1] or ref.endswith(":latest"):
        sys.exit("mkimage.py: the image needs a version tag (never latest)")
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.USTAR_FORMAT) as t:
        add(t, "etc", mode=0o755, kind=tarfile.DIRTYPE)
        add(t, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        add(t, "etc/passwd", b"root:x:0:0:root:/:/nonexistent\nnobody:x:65534:65534:nobody:/:/nonexistent\n")
        add(t, "tmp", mode=0o1777, kind=tarfile.DIRTYPE)
        dirs = {"etc", "tmp"}
        for src, dst in sorted(files, key=lambda f: f[1]):
            parts = dst.strip("/").split("/")
            for n in range(1, len(parts)):
                d = "/".join(parts[:n])
                if d not in dirs:
                    dirs.add(d)
                    add(t, d, mode=0o755, kind=tarfile.DIRTYPE)
            with open(os.path.realpath(src), "rb") as f:
                add(t, dst.lstrip("/"), f.read(), mode=0o755)
    layer = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": [entrypoint], "Env": args.env or ["PATH=/:/bin"], "WorkingDir": "/"},
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
