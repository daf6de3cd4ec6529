//! The container images `images/build.sh` assembles without Docker (docker-archive tarballs of
//! statecar, statecar-operator and pause), checked without a container runtime:
//!
//! - each archive's manifest.json points at a config and a layer that exist, the config's
//!   diff_id is the layer's sha256, the tag is the workspace version, and the user and
//!   entrypoint are right;
//! - each layer holds exactly the binary, the libraries `ldd` lists for it and the loader,
//!   passwd/group and (for the Rust binaries) the CA bundle, nsswitch.conf and /tmp: no shell,
//!   every entry root-owned, sorted and with the same mtime;
//! - building twice gives the same bytes;
//! - the binaries run on the layer's own loader and libraries alone, and, when the tests run as
//!   root, the sidecar serves requests in a chroot of its layer as uid 65532 and pause reaps
//!   orphans as PID 1 of a PID namespace.
//!
//! The release binaries come from `STATECAR_RELEASE_DIR` (default `$CARGO_TARGET_DIR/release`,
//! else `target/release`); build.sh builds them there with cargo when missing or stale, so a
//! first run may take minutes and later ones a few seconds.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use statecar_tests::process::{Guarded, Spawn, exit_code, free_port};

/// The workspace version (this crate's version is `version.workspace = true`).
const VERSION: &str = env!("CARGO_PKG_VERSION");
const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

struct Spec {
    /// Image name: the tarball is `<name>-<version>.tar`, the tag `statecar/<name>:<version>`.
    name: &'static str,
    /// The binary's path in the image, without the leading `/`.
    entry: &'static str,
    uid: u32,
    user: &'static str,
    /// The Rust binaries: dynamically linked, with the CA bundle, nsswitch.conf and /tmp.
    full: bool,
}

const SPECS: [Spec; 3] = [
    Spec {
        name: "statecar",
        entry: "statecar",
        uid: 65532,
        user: "nonroot",
        full: true,
    },
    Spec {
        name: "statecar-operator",
        entry: "statecar-operator",
        uid: 65532,
        user: "nonroot",
        full: true,
    },
    Spec {
        name: "pause",
        entry: "pause",
        uid: 65535,
        user: "pause",
        full: false,
    },
];

/// One line of `tar -tv`.
struct Entry {
    /// `ls -l` style: `-rwxr-xr-x`, `drwxrwxrwt`, ...
    perms: String,
    /// `uid/gid`
    owner: String,
    /// date and time
    when: String,
    /// without a trailing `/`
    path: String,
}

struct Image {
    spec: &'static Spec,
    archive: PathBuf,
    rebuilt: PathBuf,
    /// The archive's members, extracted.
    unpacked: PathBuf,
    manifest: Value,
    config_file: String,
    config: Value,
    layer_file: String,
    layer: PathBuf,
    listing: Vec<Entry>,
    /// The layer, extracted: the image's root filesystem.
    root: PathBuf,
}

struct Built {
    images: Vec<Image>,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Runs `cmd`, panicking with its output unless it succeeds.
fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    stdout(&out)
        .split_whitespace()
        .next()
        .expect("sha256sum prints a digest")
        .to_string()
}

/// A scratch directory for this test process under cargo's per-target tmp dir. Directories
/// left by earlier runs whose process is gone are removed.
fn scratch() -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    if let Ok(dirs) = std::fs::read_dir(base) {
        for d in dirs.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("images-")
                && pid.parse::<u32>().is_ok()
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
    }
    let dir = base.join(format!("images-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn build_sh(out: &Path, extra: &[&str]) {
    let t = Instant::now();
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("images/build.sh"))
        .arg("--out")
        .arg(out)
        .args(extra);
    let res = run(&mut cmd);
    eprintln!(
        "images/build.sh{} took {:.1}s:\n{}{}",
        extra.iter().map(|a| format!(" {a}")).collect::<String>(),
        t.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&res.stderr),
        stdout(&res)
    );
}

/// Builds the images twice (the second time from exactly the same binaries) and unpacks the
/// first build. Shared by every test of this file; a failure is reported by each test without
/// building again.
fn built() -> &'static Built {
    static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        std::panic::catch_unwind(|| {
            let dir = scratch();
            let (a, b) = (dir.join("a"), dir.join("b"));
            build_sh(&a, &[]);
            build_sh(&b, &["--no-build"]);
            let images = SPECS
                .iter()
                .map(|spec| unpack(spec, &a, &b, &dir))
                .collect();
            Built { images }
        })
        .map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "building the images failed".to_string())
        })
    });
    match built {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

fn unpack(spec: &'static Spec, a: &Path, b: &Path, dir: &Path) -> Image {
    let file = format!("{}-{VERSION}.tar", spec.name);
    let archive = a.join(&file);
    assert!(archive.is_file(), "build.sh wrote no {}", archive.display());
    let unpacked = dir.join("unpacked").join(spec.name);
    std::fs::create_dir_all(&unpacked).expect("mkdir");
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked));

    let manifest: Value = serde_json::from_slice(
        &std::fs::read(unpacked.join("manifest.json")).expect("the archive has a manifest.json"),
    )
    .expect("manifest.json is JSON");
    let entries = manifest.as_array().expect("manifest.json is an array");
    assert_eq!(entries.len(), 1, "one image per archive: {manifest}");
    let manifest = entries[0].clone();
    let config_file = manifest["Config"]
        .as_str()
        .expect("manifest Config")
        .to_string();
    let layers = manifest["Layers"].as_array().expect("manifest Layers");
    assert_eq!(layers.len(), 1, "one layer: {manifest}");
    let layer_file = layers[0].as_str().expect("a layer path").to_string();
    let config_path = unpacked.join(&config_file);
    let layer = unpacked.join(&layer_file);
    assert!(config_path.is_file(), "{config_file} is not in {file}");
    assert!(layer.is_file(), "{layer_file} is not in {file}");
    let config: Value = serde_json::from_slice(&std::fs::read(&config_path).expect("read config"))
        .expect("the config is JSON");

    let listing = stdout(&run(Command::new("tar")
        .args(["--numeric-owner", "--full-time", "-tvf"])
        .arg(&layer)))
    .lines()
    .map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() >= 6, "unexpected tar listing line: {line}");
        Entry {
            perms: f[0].to_string(),
            owner: f[1].to_string(),
            when: format!("{} {}", f[3], f[4]),
            path: f[5..].join(" ").trim_end_matches('/').to_string(),
        }
    })
    .collect();

    let root = dir.join("root").join(spec.name);
    std::fs::create_dir_all(&root).expect("mkdir");
    run(Command::new("tar")
        .args(["--numeric-owner", "-xpf"])
        .arg(&layer)
        .arg("-C")
        .arg(&root));

    Image {
        spec,
        archive,
        rebuilt: b.join(&file),
        unpacked,
        manifest,
        config_file,
        config,
        layer_file,
        layer,
        listing,
        root,
    }
}

fn image(name: &str) -> &'static Image {
    built()
        .images
        .iter()
        .find(|i| i.spec.name == name)
        .expect("a known image")
}

/// What `ldd` says a binary needs: (libraries by absolute path, the loader), or None for a
/// static binary.
fn ldd(binary: &Path) -> Option<(Vec<String>, String)> {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    let text = stdout(&out) + &String::from_utf8_lossy(&out.stderr);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return None;
    }
    assert!(out.status.success(), "ldd {}: {text}", binary.display());
    assert!(
        !text.contains("not found"),
        "ldd {}: {text}",
        binary.display()
    );
    let (mut libs, mut loader) = (Vec::new(), None);
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once("=>") {
            Some((_, target)) => target.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or_default().trim();
        if !path.starts_with('/') {
            continue; // the vDSO
        }
        if line.contains("=>") {
            libs.push(path.to_string());
        } else {
            loader = Some(path.to_string());
        }
    }
    Some((libs, loader.expect("ldd names the dynamic loader")))
}

/// The files a layer must hold (without leading `/`): the binary, its libraries and loader,
/// passwd/group and, for the Rust binaries, the CA bundle and nsswitch.conf.
fn expected_files(img: &Image) -> BTreeSet<String> {
    let mut files: BTreeSet<String> = [img.spec.entry, "etc/passwd", "etc/group"]
        .into_iter()
        .map(String::from)
        .collect();
    match ldd(&img.root.join(img.spec.entry)) {
        Some((libs, loader)) => {
            assert!(img.spec.full, "{} should be static", img.spec.entry);
            files.extend(
                libs.iter()
                    .chain([&loader])
                    .map(|p| p.trim_start_matches('/').to_string()),
            );
        }
        None => assert!(!img.spec.full, "{} should be dynamic", img.spec.entry),
    }
    if img.spec.full {
        files.insert(CA_BUNDLE.to_string());
        files.insert("etc/nsswitch.conf".to_string());
    }
    files
}

#[test]
fn manifests_point_at_the_config_and_layer_tagged_with_the_workspace_version() {
    assert_ne!(VERSION, "latest");
    for img in &built().images {
        let tag = format!("statecar/{}:{VERSION}", img.spec.name);
        assert_eq!(img.manifest["RepoTags"], json!([tag]), "{}", img.spec.name);
        // The file names are content addresses: the config's sha256 is the image ID.
        assert_eq!(
            format!("{}.json", sha256(&img.unpacked.join(&img.config_file))),
            img.config_file
        );
        assert_eq!(
            format!("{}/layer.tar", sha256(&img.layer)),
            img.layer_file,
            "{}",
            img.spec.name
        );
    }
}

#[test]
fn config_diff_id_is_the_layer_digest_and_user_and_entrypoint_are_right() {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    for img in &built().images {
        let c = &img.config;
        let name = img.spec.name;
        assert_eq!(
            c["rootfs"],
            json!({"type": "layers", "diff_ids": [format!("sha256:{}", sha256(&img.layer))]}),
            "{name}"
        );
        assert_eq!(c["os"], "linux", "{name}");
        assert_eq!(c["architecture"], arch, "{name}");
        let uid = img.spec.uid;
        assert_eq!(c["config"]["User"], format!("{uid}:{uid}"), "{name}");
        assert_eq!(
            c["config"]["Entrypoint"],
            json!([format!("/{}", img.spec.entry)]),
            "{name}"
        );
        assert_eq!(
            c["config"]["Cmd"],
            Value::Null,
            "{name}: no default arguments"
        );
        assert_eq!(
            c["config"]["Labels"]["org.opencontainers.image.version"],
            VERSION
        );
    }
}

#[test]
fn layers_hold_exactly_the_binary_its_libraries_and_the_base_files() {
    for img in &built().images {
        let name = img.spec.name;
        let files: BTreeSet<String> = img
            .listing
            .iter()
            .filter(|e| !e.perms.starts_with('d'))
            .map(|e| e.path.clone())
            .collect();
        let expected = expected_files(img);
        assert_eq!(files, expected, "{name}: the layer's files");

        // Directories: the parents of those files, and /tmp for the Rust binaries.
        let dirs: BTreeSet<String> = img
            .listing
            .iter()
            .filter(|e| e.perms.starts_with('d'))
            .map(|e| e.path.clone())
            .collect();
        let mut parents: BTreeSet<String> = expected
            .iter()
            .flat_map(|f| {
                let parts: Vec<&str> = f.split('/').collect();
                (1..parts.len())
                    .map(|n| parts[..n].join("/"))
                    .collect::<Vec<_>>()
            })
            .collect();
        if img.spec.full {
            parents.insert("tmp".to_string());
        }
        assert_eq!(dirs, parents, "{name}: the layer's directories");

        for e in &img.listing {
            let want = if e.path == img.spec.entry {
                "-rwxr-xr-x"
            } else if e.path == "tmp" {
                "drwxrwxrwt"
            } else if e.perms.starts_with('d') {
                "drwxr-xr-x"
            } else {
                // libraries keep their executable bit (the loader and libc have one)
                &e.perms
            };
            assert_eq!(e.perms, want, "{name}: mode of {}", e.path);
        }

        // Libraries and the CA bundle are the host's files, symlinks resolved.
        for f in &expected {
            if f.starts_with("lib") || f == CA_BUNDLE {
                let host = std::fs::read(Path::new("/").join(f)).expect("read host file");
                let ours = std::fs::read(img.root.join(f)).expect("read image file");
                assert!(host == ours, "{name}: /{f} differs from the host's");
            }
        }

        let passwd = std::fs::read_to_string(img.root.join("etc/passwd")).expect("passwd");
        let group = std::fs::read_to_string(img.root.join("etc/group")).expect("group");
        let (user, uid) = (img.spec.user, img.spec.uid);
        assert!(
            passwd
                .lines()
                .any(|l| l.starts_with(&format!("{user}:x:{uid}:{uid}:"))),
            "{name}: /etc/passwd has no {user} {uid}:\n{passwd}"
        );
        assert!(
            group.lines().any(|l| l == format!("{user}:x:{uid}:")),
            "{name}: /etc/group has no {user} {uid}:\n{group}"
        );
        assert!(passwd.lines().any(|l| l.starts_with("root:x:0:0:")));
        if img.spec.full {
            let ca = std::fs::read_to_string(img.root.join(CA_BUNDLE)).expect("CA bundle");
            assert!(
                ca.matches("BEGIN CERTIFICATE").count() > 10,
                "{name}: the CA bundle holds no roots"
            );
        }
    }
}

#[test]
fn no_image_has_a_shell() {
    for img in &built().images {
        for path in ["bin/sh", "bin/bash", "usr/bin/sh", "bin/busybox"] {
            assert!(
                !img.listing.iter().any(|e| e.path == path),
                "{}: /{path} is in the image",
                img.spec.name
            );
            assert!(!img.root.join(path).exists());
        }
        assert!(
            !img.listing
                .iter()
                .any(|e| e.path.starts_with("bin") || e.path.starts_with("usr")),
            "{}: no bin/ or usr/ directories expected",
            img.spec.name
        );
    }
}

#[test]
fn layers_are_root_owned_sorted_and_timestamped_alike() {
    for img in &built().images {
        let name = img.spec.name;
        let paths: Vec<&str> = img.listing.iter().map(|e| e.path.as_str()).collect();
        let mut sorted = paths.clone();
        sorted.sort_by(|a, b| a.split('/').cmp(b.split('/')));
        sorted.dedup();
        assert_eq!(paths, sorted, "{name}: entries are sorted, each once");
        for e in &img.listing {
            assert_eq!(e.owner, "0/0", "{name}: owner of {}", e.path);
            assert!(
                e.perms.starts_with('-') || e.perms.starts_with('d'),
                "{name}: {} is neither a regular file nor a directory",
                e.path
            );
            assert_eq!(e.when, img.listing[0].when, "{name}: mtime of {}", e.path);
        }
    }
}

#[test]
fn rebuilding_gives_identical_tarballs() {
    for img in &built().images {
        let first = std::fs::read(&img.archive).expect("read first build");
        let second = std::fs::read(&img.rebuilt).expect("read second build");
        assert!(
            first == second,
            "{}: two builds from the same binaries differ",
            img.spec.name
        );
    }
}

/// The image's loader, with an empty environment, told to take libraries from the image's
/// library directories only.
fn image_loader(img: &Image) -> Command {
    let (libs, loader) = ldd(&img.root.join(img.spec.entry)).expect("a dynamic binary");
    let lib_dirs: BTreeSet<String> = libs
        .iter()
        .map(|l| {
            let lib = img.root.join(l.trim_start_matches('/'));
            let dir = lib.parent().expect("a library directory");
            dir.display().to_string()
        })
        .collect();
    let mut cmd = Command::new(img.root.join(loader.trim_start_matches('/')));
    cmd.env_clear()
        .arg("--inhibit-cache")
        .arg("--library-path")
        .arg(lib_dirs.into_iter().collect::<Vec<_>>().join(":"));
    cmd
}

/// Checks that every library the image's loader resolves for the binary is inside the image
/// (for one that is missing, the loader would fall back to the host's directories), then runs
/// the binary's `--help` that way.
fn runs_on_image_libraries_alone(name: &str, usage: &str) {
    let img = image(name);
    let bin = img.root.join(img.spec.entry);
    let list = stdout(&run(image_loader(img).arg("--list").arg(&bin)));
    let root = img.root.display().to_string();
    let resolved: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_once("=>"))
        .map(|(_, t)| t.trim().split(" (").next().unwrap_or_default())
        .collect();
    assert!(!resolved.is_empty(), "{name}: nothing resolved:\n{list}");
    for path in resolved {
        assert!(
            path.starts_with(&root),
            "{name}: {path} comes from outside the image:\n{list}"
        );
    }

    let help = stdout(&run(image_loader(img).arg(&bin).arg("--help")));
    assert!(
        help.contains(usage),
        "{name} --help does not say {usage:?}:\n{help}"
    );
}

#[test]
fn sidecar_runs_on_the_image_loader_and_libraries_alone() {
    runs_on_image_libraries_alone("statecar", "Usage: statecar");
}

#[test]
fn operator_runs_on_the_image_loader_and_libraries_alone() {
    runs_on_image_libraries_alone("statecar-operator", "Usage: statecar-operator");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A plain HTTP/1.1 request to 127.0.0.1:port: (status, body).
fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[test]
fn sidecar_serves_state_in_a_chroot_of_its_layer_as_nonroot() {
    if !is_root() {
        eprintln!("skipped: chroot needs root (the loader check above still ran)");
        return;
    }
    let img = image("statecar");
    let logs = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut sidecar = Guarded::spawn(Spawn {
        program: OsStr::new("chroot"),
        args: vec![
            "--userspec=65532:65532".into(),
            img.root.display().to_string(),
            "/statecar".into(),
            "--app-id".into(),
            "images".into(),
            "--dapr-http-port".into(),
            port.to_string(),
        ],
        env: vec![("HOME".into(), "/nonexistent".into())],
        env_remove: vec!["DAPR_API_TOKEN".into(), "NAMESPACE".into()],
        log_dir: logs.path(),
        log_name: "statecar",
        cleanup_dir: None,
    })
    .expect("start chroot");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match http(port, "GET", "/v1.0/healthz", "") {
            Ok((204, _)) => break,
            _ if Instant::now() < deadline && sidecar.is_running() => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => panic!("no healthy sidecar: {other:?}\n{}", sidecar.logs()),
        }
    }
    let saved = http(
        port,
        "POST",
        "/v1.0/state/statestore",
        r#"[{"key":"k","value":{"in":"chroot"}}]"#,
    )
    .expect("save");
    assert_eq!(saved.0, 204, "{saved:?}");
    let got = http(port, "GET", "/v1.0/state/statestore/k", "").expect("get");
    assert_eq!(got, (200, r#"{"in":"chroot"}"#.to_string()));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", sidecar.pid())).expect("status");
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["Uid:", "65532", "65532", "65532", "65532"]),
        "the sidecar does not run as 65532:\n{status}"
    );
    sidecar.signal(libc::SIGTERM);
    let st = sidecar
        .wait_timeout(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert_eq!(exit_code(st), 0, "{}", sidecar.logs());
}

#[test]
fn pause_prints_its_version_and_exits_zero_on_sigterm_and_sigint() {
    let img = image("pause");
    let pause = img.root.join("pause");
    let out = run(Command::new(&pause).arg("-v"));
    assert_eq!(stdout(&out).trim(), format!("pause {VERSION}"));
    let logs = tempfile::tempdir().expect("temp dir");
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut p = Guarded::spawn(Spawn {
            program: pause.as_os_str(),
            args: vec![],
            env: vec![],
            env_remove: vec![],
            log_dir: logs.path(),
            log_name: "pause",
            cleanup_dir: None,
        })
        .expect("start pause");
        std::thread::sleep(Duration::from_millis(200));
        assert!(p.is_running(), "pause exited by itself: {}", p.logs());
        p.signal(sig);
        let st = p
            .wait_timeout(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("pause ignored signal {sig}"));
        assert_eq!(exit_code(st), 0, "signal {sig}: {}", p.logs());
    }
}

/// Host pids of the children of `pid`.
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn pause_reaps_orphans_as_pid_1() {
    let tools = ["unshare", "nsenter"]
        .iter()
        .all(|t| Command::new(t).arg("--version").output().is_ok());
    if !is_root() || !tools {
        eprintln!("skipped: needs root and unshare/nsenter for a PID namespace");
        return;
    }
    let img = image("pause");
    let logs = tempfile::tempdir().expect("temp dir");
    // unshare forks pause as PID 1 of a new PID namespace, and kills it when unshare dies.
    let mut ns = Guarded::spawn(Spawn {
        program: OsStr::new("unshare"),
        args: vec![
            "--pid".into(),
            "--fork".into(),
            "--kill-child".into(),
            img.root.join("pause").display().to_string(),
        ],
        env: vec![],
        env_remove: vec![],
        log_dir: logs.path(),
        log_name: "pause",
        cleanup_dir: None,
    })
    .expect("start unshare");
    let deadline = Instant::now() + Duration::from_secs(5);
    let pause = loop {
        if let [pid] = children(ns.pid())[..] {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "no pause under unshare: {}",
            ns.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // A process that leaves an orphan in pause's namespace: the orphan becomes pause's child,
    // and must be reaped when it exits.
    // The orphan sleeps long enough to be seen even on a busy machine. Its output goes to
    // /dev/null: holding the captured pipes open, it would keep `run` waiting until it exited.
    run(Command::new("nsenter")
        .args(["--target", &pause.to_string(), "--pid", "--", "sh", "-c"])
        .arg("sleep 3 </dev/null >/dev/null 2>&1 &"));
    let deadline = Instant::now() + Duration::from_secs(2);
    let orphans = loop {
        let now = children(pause);
        if !now.is_empty() || Instant::now() >= deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(orphans.len(), 1, "the orphan is pause's child: {orphans:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !children(pause).is_empty() {
        assert!(
            Instant::now() < deadline,
            "pause left its exited child unreaped: {:?} {}",
            children(pause),
            std::fs::read_to_string(format!("/proc/{}/status", orphans[0])).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Still waiting, as PID 1 it only exits on SIGTERM.
    assert!(ns.is_running());
    // SAFETY: kill(2) on the pause process we started (through unshare), still running.
    unsafe {
        libc::kill(pause, libc::SIGTERM);
    }
    let st = ns
        .wait_timeout(Duration::from_secs(5))
        .expect("pause exits on SIGTERM");
    assert_eq!(exit_code(st), 0, "{}", ns.logs());
}
