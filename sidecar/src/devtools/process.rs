//! Small process helpers (Linux): signals, `/proc` checks, PATH lookup, exit codes.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

pub use libc::{SIGINT, SIGKILL, SIGTERM};

/// Sends `sig` to `pid` (a process group when negative). Errors (no such process) are ignored:
/// every caller treats a process that is already gone as done.
pub fn signal(pid: i32, sig: i32) {
    if pid == 0 || pid == -1 {
        // 0 and -1 would mean "our own group" and "every process": never meant here.
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether `pid` is a live process (an exited, not yet reaped one counts as gone).
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses, which may itself hold ')'.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
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

/// The first executable file named `program` in the directories of PATH.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The exit code a shell would report: the code, or 128 + the signal that killed it.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// "exit code 3", "killed by signal 9, SIGKILL".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}, {}", signal_name(sig)),
        _ => status.to_string(),
    }
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// Makes the child started by `cmd` its own process group leader (so that a Ctrl-C in the
/// terminal reaches only `statecar run`, which forwards it) and has the kernel send it `sig`
/// if the thread that started it dies, so that children never outlive a killed
/// `statecar run`. Only meaningful when the spawning thread lives as long as the process.
pub fn own_group_dying_with_parent(cmd: &mut std::process::Command, sig: i32) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe calls (prctl, getppid, raise), touching no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::raise(sig);
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_named() {
        let me = std::process::id() as i32;
        assert!(is_alive(me));
        assert!(!cmdline(me).is_empty());
        assert!(!is_alive(i32::MAX));
        assert_eq!(cmdline(i32::MAX), "");
    }

    #[test]
    fn exit_codes_as_shells_report_them() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGTERM)), 143);
        assert_eq!(
            describe(ExitStatus::from_raw(libc::SIGKILL)),
            "killed by signal 9, SIGKILL"
        );
        assert_eq!(describe(ExitStatus::from_raw(1 << 8)), "exit code 1");
    }

    #[test]
    fn path_lookup() {
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("statecar-no-such-program").is_none());
    }
}
