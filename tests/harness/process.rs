//! Child processes that cannot outlive the test process.
//!
//! Every program is started through a small `sh` wrapper. The wrapper starts the program in the
//! background (stdout/stderr to files), reports its pid on the wrapper's stdout, and keeps a
//! watchdog reading the wrapper's stdin, which is a pipe held by the test process. When that pipe
//! closes (the `Guarded` is dropped, or the test process dies in any way, even by SIGKILL), the
//! watchdog sends SIGKILL to the program. The wrapper exits with the program's exit status
//! (128 + signal number when it was killed by a signal).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const WRAPPER: &str = r#"
out="$1"; err="$2"; cleanup="$3"; shift 3
exec 3<&0 0</dev/null
"$@" </dev/null >"$out" 2>"$err" 3<&- &
child=$!
echo "$child"
( cat <&3 >/dev/null 2>&1; kill -9 "$child" 2>/dev/null
  if [ -n "$cleanup" ]; then rm -rf "$cleanup"; fi ) >/dev/null 2>&1 &
exec 3<&- 1>/dev/null
wait "$child"
"#;

/// A program started through the watchdog wrapper. Killed (SIGKILL) on drop.
pub struct Guarded {
    wrapper: Child,
    watchdog_pipe: Option<ChildStdin>,
    pid: i32,
    status: Option<ExitStatus>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

/// How to start a guarded program.
pub struct Spawn<'a> {
    pub program: &'a OsStr,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub env_remove: Vec<String>,
    /// stdout/stderr of the program go to `<log_dir>/<log_name>.stdout|.stderr`.
    pub log_dir: &'a Path,
    pub log_name: &'a str,
    /// A directory the watchdog removes once the program is killed (for directories whose
    /// owner is never dropped, e.g. the shared redis of a test binary).
    pub cleanup_dir: Option<&'a Path>,
}

impl Guarded {
    pub fn spawn(spec: Spawn<'_>) -> std::io::Result<Guarded> {
        let stdout_path = spec.log_dir.join(format!("{}.stdout", spec.log_name));
        let stderr_path = spec.log_dir.join(format!("{}.stderr", spec.log_name));
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(WRAPPER)
            .arg("statecar-test-wrapper")
            .arg(&stdout_path)
            .arg(&stderr_path)
            .arg(spec.cleanup_dir.map(Path::as_os_str).unwrap_or_default())
            .arg(spec.program)
            .args(&spec.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for k in &spec.env_remove {
            cmd.env_remove(k);
        }
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        let mut wrapper = cmd.spawn()?;
        let watchdog_pipe = wrapper.stdin.take();
        let stdout = wrapper.stdout.take().expect("wrapper stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let pid: i32 = match line.trim().parse() {
            Ok(pid) => pid,
            Err(_) => {
                let _ = wrapper.kill();
                let _ = wrapper.wait();
                return Err(std::io::Error::other(format!(
                    "wrapper did not report a pid (got {line:?})"
                )));
            }
        };
        Ok(Guarded {
            wrapper,
            watchdog_pipe,
            pid,
            status: None,
            stdout_path,
            stderr_path,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The exit status if the program has exited (never blocks).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Ok(Some(st)) = self.wrapper.try_wait()
        {
            self.status = Some(st);
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Sends `sig` to the program (not the wrapper) if it is still running.
    pub fn signal(&mut self, sig: i32) {
        if self.is_running() {
            // SAFETY: kill(2) with a pid we started and have not yet reaped (the wrapper is
            // still running, so it has not reaped the program either).
            unsafe {
                libc::kill(self.pid, sig);
            }
        }
    }

    /// Waits until the program exits, at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap. Idempotent.
    pub fn kill(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.watchdog_pipe.take();
        match self.status {
            Some(st) => st,
            None => {
                let st = self.wrapper.wait().expect("waiting for wrapper");
                self.status = Some(st);
                st
            }
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Both logs, for panic messages.
    pub fn logs(&self) -> String {
        format!(
            "--- stderr ---\n{}\n--- stdout ---\n{}",
            tail(&self.stderr(), 8000),
            tail(&self.stdout(), 8000)
        )
    }
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Exit code of a status, mapping "killed by signal n" to 128 + n like a shell does.
pub fn exit_code(st: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code()
        .or_else(|| st.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}
