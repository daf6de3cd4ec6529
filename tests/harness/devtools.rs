//! Helpers for the developer commands (`statecar init`, `run`, `uninstall`): a temp HOME,
//! short commands run to completion with a deadline, the private redis-server `init
//! --start-redis` leaves running, and `/proc` lookups.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::exit_code;
use crate::sidecar::statecar_bin;

/// A temp directory used as HOME, with a separate directory for command output. Any private
/// redis-server that `statecar init --start-redis` started under it is killed on drop.
pub struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        let dir = tempfile::Builder::new()
            .prefix("statecar-home-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir_all(dir.path().join("home")).expect("mkdir home");
        std::fs::create_dir_all(dir.path().join("out")).expect("mkdir out");
        Home { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// A scratch directory outside HOME (scripts, logs).
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    pub fn statecar_dir(&self) -> PathBuf {
        self.path().join(".statecar")
    }

    pub fn components_dir(&self) -> PathBuf {
        self.statecar_dir().join("components")
    }

    pub fn statestore_file(&self) -> PathBuf {
        self.components_dir().join("statestore.yaml")
    }

    pub fn statestore_text(&self) -> String {
        std::fs::read_to_string(self.statestore_file())
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.statestore_file().display()))
    }

    pub fn redis_dir(&self) -> PathBuf {
        self.statecar_dir().join("redis")
    }

    pub fn redis_pid_file(&self) -> PathBuf {
        self.redis_dir().join("redis.pid")
    }

    /// The pid in the private redis-server's pid file, if any.
    pub fn redis_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.redis_pid_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Runs `statecar ARGS` with this HOME (30 s at most).
    pub fn statecar(&self, args: &[&str]) -> Finished {
        self.statecar_env(args, &[], &[])
    }

    /// Runs `statecar ARGS` with this HOME and extra environment (30 s at most).
    pub fn statecar_env(&self, args: &[&str], env: &[(&str, &str)], remove: &[&str]) -> Finished {
        let mut cmd = Command::new(statecar_bin());
        cmd.args(args)
            .env("HOME", self.path())
            .env_remove("DAPR_HTTP_PORT")
            .env_remove("DAPR_API_TOKEN")
            .env_remove("NAMESPACE")
            .env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        for k in remove {
            cmd.env_remove(k);
        }
        finish(cmd, &self.scratch(), Duration::from_secs(30))
    }
}

impl Default for Home {
    fn default() -> Self {
        Home::new()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        if let Some(pid) = self.redis_pid()
            && cmdline(pid).contains("redis-server")
        {
            // SAFETY: kill(2) on a redis-server this test's HOME started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// How a command ended.
#[derive(Debug)]
pub struct Finished {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Both outputs, for panic messages.
    pub fn output(&self) -> String {
        format!(
            "exit code {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(self.code, 0, "{}", self.output());
        self
    }
}

/// Runs `cmd` to completion with stdout and stderr in files under `dir`; kills it and panics
/// after `timeout`.
pub fn finish(mut cmd: Command, dir: &Path, timeout: Duration) -> Finished {
    let name = crate::unique("cmd");
    let out_path = dir.join(format!("{name}.stdout"));
    let err_path = dir.join(format!("{name}.stderr"));
    let out = std::fs::File::create(&out_path).expect("stdout file");
    let err = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawning statecar");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("waiting") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        code: exit_code(status),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// The command line of `pid`, arguments joined by spaces (empty when it is gone).
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Whether `pid` is a live process (a zombie counts as gone).
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// The process group of `pid`.
pub fn process_group(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // state, ppid, pgrp
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Waits until `pid` is gone; false if it is still alive after `timeout`.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The children of `pid` (those its main thread started).
pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The child of `pid` whose command line contains `needle`, waiting up to `timeout`.
pub fn child_matching(pid: i32, needle: &str, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(c) = children(pid)
            .into_iter()
            .find(|c| cmdline(*c).contains(needle))
        {
            return Some(c);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A directory for PATH that holds nothing (so no redis-server is found).
pub fn empty_path_dir(home: &Home) -> OsString {
    let dir = home.scratch().join("empty-bin");
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir.into_os_string()
}

/// Whether `python3` on PATH can import `requests` (the counter example needs it).
pub fn python_has_requests() -> Result<(), String> {
    match Command::new("python3")
        .args(["-c", "import requests"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "python3 cannot import requests ({}): install it with `pip install -r \
             examples/counter/requirements.txt` or, on Debian/Ubuntu, `sudo apt-get install \
             python3-requests`",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!(
            "python3 is not on PATH ({e}): install it (sudo apt-get install python3 \
             python3-requests)"
        )),
    }
}
