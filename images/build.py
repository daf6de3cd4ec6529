#!/usr/bin/env python3
"""Assembles statecar's container images as docker-archive tarballs, without Docker.

Each image is one layer holding a binary and exactly what it needs at run time: the shared
libraries `ldd` lists for it (copied as regular files, symlinks resolved, at the paths `ldd`
prints, the dynamic loader included), /etc/passwd and /etc/group with the image's user, and,
for the Rust binaries, the CA bundle, /etc/nsswitch.conf and a world-writable /tmp. There is
no shell and no package manager. Every entry is owned by root and carries the same mtime, and
entries are written in sorted order, so the same inputs always give the same bytes (and so the
same image ID).

The archive is what `docker save` writes (and `docker load` and `ctr images import` read):
manifest.json, the image config <sha256>.json and the layer <sha256>/layer.tar.

Usage (images/build.sh calls this; it builds the binaries first):
    build.py --out DIR --statecar BIN --operator BIN --pause BIN
    build.py --print-version
"""

import argparse
import hashlib
import io
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import tomllib
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NOLOGIN = "/sbin/nologin"

# Accounts every image has, plus the one the image runs as (see IMAGES).
BASE_USERS = [("root", 0, "/root"), ("nobody", 65534, "/nonexistent")]

NSSWITCH = b"""\
passwd:  files
group:   files
shadow:  files
hosts:   files dns
networks: files
protocols: files
services: files
"""


def workspace_package():
    with open(REPO / "Cargo.toml", "rb") as f:
        return tomllib.load(f)["workspace"]["package"]


def version():
    v = workspace_package()["version"]
    if not re.fullmatch(r"[0-9A-Za-z][0-9A-Za-z._+-]*", v) or v == "latest":
        sys.exit(f"build.py: unusable version {v!r} in Cargo.toml")
    # A tag may not contain '+'; build metadata becomes '_' as most registries do it.
    return v.replace("+", "_")


def source_date_epoch():
    """The one timestamp in the images: SOURCE_DATE_EPOCH if set, else the Unix epoch."""
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def go_arch():
    machine = platform.machine()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
            "s390x": "s390x", "riscv64": "riscv64"}.get(machine)
    if arch is None:
        sys.exit(f"build.py: no OCI architecture name known for {machine}")
    return arch


def shared_libraries(binary):
    """Absolute paths of the libraries `ldd` lists for binary, loader included.

    A static binary has none. The vDSO (no path) is skipped; a library ldd cannot find is an
    error, as the image would not start.
    """
    proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        if "not a dynamic executable" in text or "statically linked" in text:
            return []
        sys.exit(f"build.py: ldd {binary} failed:\n{text}")
    if "statically linked" in text:
        return []
    libs = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        if "not found" in line:
            sys.exit(f"build.py: {binary}: a library is missing: {line}")
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" (", 1)[0].strip()
        else:
            target = line.split(" (", 1)[0].strip()
        if target.startswith("/"):
            libs.append(target)
        # else: linux-vdso.so.1 and the like, provided by the kernel
    return sorted(set(libs))


def passwd_group(users):
    """/etc/passwd and /etc/group for (name, id, home) accounts, each with a same-named group."""
    users = sorted(users, key=lambda u: u[1])
    passwd = "".join(f"{n}:x:{i}:{i}:{n}:{h}:{NOLOGIN}\n" for n, i, h in users)
    group = "".join(f"{n}:x:{i}:\n" for n, i, _ in users)
    return passwd.encode(), group.encode()


class Layer:
    """The files of one layer, written as a deterministic uncompressed tar."""

    def __init__(self, mtime):
        self.mtime = mtime
        self.entries = {}  # path without leading '/' -> (mode, bytes or None for a directory)

    def add_dir(self, path, mode=0o755):
        path = path.strip("/")
        if path:
            self.entries.setdefault(path, (mode, None))

    def add_file(self, path, data, mode):
        path = path.strip("/")
        if path in self.entries:
            sys.exit(f"build.py: {path} added twice")
        self.entries[path] = (mode, data)

    def add_host_file(self, image_path, host_path):
        """host_path's content (symlinks followed) at image_path, 0755 if executable else 0644."""
        real = os.path.realpath(host_path)
        try:
            with open(real, "rb") as f:
                data = f.read()
        except OSError as e:
            hint = " (install ca-certificates)" if host_path == CA_BUNDLE else ""
            sys.exit(f"build.py: cannot read {host_path}: {e.strerror}{hint}")
        mode = 0o755 if os.stat(real).st_mode & 0o111 else 0o644
        self.add_file(image_path, data, mode)

    def tar(self):
        # Every parent directory gets its own entry, ahead of its contents.
        for path in list(self.entries):
            parts = path.split("/")
            for n in range(1, len(parts)):
                self.add_dir("/".join(parts[:n]))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for path in sorted(self.entries, key=lambda p: p.split("/")):
                mode, data = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mode = mode
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mtime = self.mtime
                if data is None:
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def docker_archive(layer_tar, config, repo_tag, mtime):
    """A `docker save` tarball of one single-layer image."""
    layer_hex = hashlib.sha256(layer_tar).hexdigest()
    config = dict(config, rootfs={"type": "layers", "diff_ids": [f"sha256:{layer_hex}"]})
    config_json = canonical_json(config)
    config_hex = hashlib.sha256(config_json).hexdigest()
    name, tag = repo_tag.rsplit(":", 1)
    files = {
        f"{config_hex}.json": config_json,
        f"{layer_hex}/layer.tar": layer_tar,
        "manifest.json": canonical_json([{
            "Config": f"{config_hex}.json",
            "RepoTags": [repo_tag],
            "Layers": [f"{layer_hex}/layer.tar"],
        }]),
        # Read only by old `docker load` versions that predate manifest.json.
        "repositories": canonical_json({name: {tag: layer_hex}}),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        entries = [(f"{layer_hex}", None)] + sorted(files.items())
        for path, data in sorted(entries, key=lambda e: e[0].split("/")):
            info = tarfile.TarInfo(path)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = mtime
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.mode = 0o644
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), config_hex


def image_config(entrypoint, user, ver, title, mtime):
    pkg = workspace_package()
    created = datetime.fromtimestamp(mtime, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "architecture": go_arch(),
        "os": "linux",
        "created": created,
        "config": {
            "User": f"{user}:{user}",
            "Entrypoint": [entrypoint],
            "Env": [PATH_ENV],
            "WorkingDir": "/",
            "Labels": {
                "org.opencontainers.image.title": title,
                "org.opencontainers.image.version": ver,
                "org.opencontainers.image.licenses": pkg.get("license", ""),
                "org.opencontainers.image.source": pkg.get("repository", ""),
            },
        },
        "history": [{"created": created, "created_by": "images/build.py"}],
    }


# name, binary option, path in the image, account it runs as, whether it gets the TLS/tmp base
IMAGES = [
    ("statecar", "statecar", "/statecar", ("nonroot", 65532, "/nonexistent"), True),
    ("statecar-operator", "operator", "/statecar-operator", ("nonroot", 65532, "/nonexistent"),
     True),
    ("pause", "pause", "/pause", ("pause", 65535, "/nonexistent"), False),
]


def build_image(name, binary, entry, account, full, out, ver, mtime):
    layer = Layer(mtime)
    layer.add_host_file(entry, binary)
    for lib in shared_libraries(binary):
        layer.add_host_file(lib, lib)
    passwd, group = passwd_group(BASE_USERS + [account])
    layer.add_file("/etc/passwd", passwd, 0o644)
    layer.add_file("/etc/group", group, 0o644)
    if full:
        layer.add_host_file(CA_BUNDLE, CA_BUNDLE)
        layer.add_file("/etc/nsswitch.conf", NSSWITCH, 0o644)
        layer.add_dir("/tmp", 0o1777)
    layer_tar = layer.tar()

    repo_tag = f"statecar/{name}:{ver}"
    config = image_config(entry, account[1], ver, name, mtime)
    archive, config_hex = docker_archive(layer_tar, config, repo_tag, mtime)
    path = out / f"{name}-{ver}.tar"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(archive)
    os.replace(tmp, path)
    print(f"{repo_tag}  {path}  id sha256:{config_hex}  "
          f"layer {len(layer_tar) / 2**20:.1f} MiB, archive {len(archive) / 2**20:.1f} MiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--print-version", action="store_true",
                    help="print the image tag (the workspace version) and exit")
    ap.add_argument("--out", type=Path, help="directory for the tarballs")
    ap.add_argument("--statecar", type=Path, help="the release statecar binary")
    ap.add_argument("--operator", type=Path, help="the release statecar-operator binary")
    ap.add_argument("--pause", type=Path, help="the static pause binary")
    args = ap.parse_args()
    ver = version()
    if args.print_version:
        print(ver)
        return
    missing = [o for o in ("out", "statecar", "operator", "pause") if getattr(args, o) is None]
    if missing:
        ap.error("missing " + ", ".join("--" + m for m in missing))
    args.out.mkdir(parents=True, exist_ok=True)
    mtime = source_date_epoch()
    for name, opt, entry, account, full in IMAGES:
        build_image(name, getattr(args, opt), entry, account, full, args.out, ver, mtime)


if __name__ == "__main__":
    main()
