//! `statecar init` and `statecar uninstall`: the default state store under `~/.statecar`, and
//! the private redis-server of `--start-redis`.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::process;
use super::redis::{self, Probe, RedisAddress, Stopped};
use super::{DevError, Layout, tilde};

/// Write the default state store to ~/.statecar/components (Redis, or in memory); with
/// --start-redis, start a private redis-server for it.
///
/// `statecar init` writes ~/.statecar/components/statestore.yaml, the state store that
/// `statecar` and `statecar run` use when no --resources-path is given, as `dapr init` does.
/// When a Redis answers at --redis-address (a PING, or a refusal such as NOAUTH), the file is
/// a `state.redis` component for that address. When nothing answers and a redis-server binary
/// is on PATH, --start-redis runs a private one, bound to 127.0.0.1 at that port, with its
/// data, config, log and pid file under ~/.statecar/redis; it keeps running after init
/// returns, and `statecar init --stop` or `statecar uninstall` stops it. Otherwise the file is
/// an in-memory store (`state.in-memory`; each sidecar keeps its own data and loses it when it
/// stops).
///
/// Running init again with the same outcome changes nothing. A file edited since init wrote
/// it is kept (init says so and exits 0) unless --force is given; the replaced file is then
/// saved as statestore.yaml.bak.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Example:\n  statecar init --start-redis\n  \
                        statecar run --app-id myapp -- python3 app.py")]
pub struct InitArgs {
    /// Where Redis is (or should run, with --start-redis).
    #[arg(long, value_name = "HOST:PORT", default_value = "localhost:6379")]
    pub redis_address: String,

    /// When nothing answers at --redis-address, start a private redis-server there (it must be
    /// on PATH; the address must be localhost or 127.0.0.1).
    #[arg(long, conflicts_with = "stop")]
    pub start_redis: bool,

    /// Replace statestore.yaml even if it was edited since init wrote it.
    #[arg(long, conflicts_with = "stop")]
    pub force: bool,

    /// Only stop the private redis-server started by --start-redis (leaves the files).
    #[arg(long)]
    pub stop: bool,
}

/// Stop the private redis-server of `statecar init --start-redis`; --all also removes
/// ~/.statecar.
///
/// With --all, ~/.statecar goes with everything in it: the components, init's records and the
/// private Redis's data (as `dapr uninstall --all`).
#[derive(Debug, Clone, clap::Args)]
pub struct UninstallArgs {
    /// Also remove ~/.statecar and everything in it.
    #[arg(long)]
    pub all: bool,
}

/// The store init settles on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Store {
    Redis(RedisAddress),
    /// In memory, because no Redis answers at this address.
    Memory(RedisAddress),
}

/// What happened to statestore.yaml.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Written {
    Created,
    Unchanged,
    /// init's own earlier file, replaced because the outcome changed.
    Updated,
    /// Edited by the user: left alone.
    KeptEdited,
    /// Edited by the user, replaced because of --force; the old file is at the path.
    Replaced(PathBuf),
}

/// `statecar init`. Messages go to `out`.
pub fn init(args: &InitArgs, layout: &Layout, out: &mut dyn Write) -> Result<(), DevError> {
    if args.stop {
        let again = format!(
            "`statecar init --start-redis{}` starts it again",
            redis::private_address(layout)
                .map(|a| address_flag(&a.to_string()))
                .unwrap_or_default()
        );
        stop_redis(layout, out, &again)?;
        return Ok(());
    }
    let addr = RedisAddress::parse(&args.redis_address)?;
    if args.start_redis && !addr.is_local() {
        return Err(DevError::NotLocal(args.redis_address.clone()));
    }
    let redis_server = process::find_on_path("redis-server");
    let probe = redis::probe(&addr);
    let mut suggest_start = false;
    let store = match &probe {
        Probe::Redis | Probe::RedisRefused(_) => {
            let ours = redis::private_redis_pid(layout).filter(|_| {
                addr.is_local() && redis::private_address(layout).map(|a| a.port) == Some(addr.port)
            });
            match ours {
                Some(pid) => say(
                    out,
                    format!("The private redis-server (pid {pid}) answers at {addr}."),
                ),
                None => say(out, format!("Redis answers at {addr}.")),
            }
            if args.start_redis && ours.is_none() {
                say(
                    out,
                    "--start-redis: a Redis already answers there, so none is started.".to_string(),
                );
            }
            if let Probe::RedisRefused(reply) = &probe {
                say(
                    out,
                    format!(
                        "It refuses commands without a password ({reply}): put the password in \
                         redisPassword in the file below."
                    ),
                );
            }
            Store::Redis(addr)
        }
        Probe::NotRedis => {
            say(
                out,
                format!("Something answers at {addr}, but it is not Redis (no reply to PING)."),
            );
            if args.start_redis {
                say(
                    out,
                    "--start-redis: that port is taken; pick another with --redis-address."
                        .to_string(),
                );
            }
            Store::Memory(addr)
        }
        Probe::Nothing => match (&redis_server, args.start_redis) {
            (Some(program), true) => {
                let pid = redis::start_private(layout, program, &addr)?;
                say(
                    out,
                    format!(
                        "Started a private redis-server (pid {pid}) on 127.0.0.1:{}; its data, \
                         log and pid file are in {}.",
                        addr.port,
                        tilde(&layout.redis_dir())
                    ),
                );
                say(
                    out,
                    "It keeps running: `statecar init --stop` or `statecar uninstall` stops it."
                        .to_string(),
                );
                Store::Redis(addr)
            }
            (None, true) => {
                say(
                    out,
                    format!(
                        "No Redis answers at {addr}, and --start-redis found no redis-server on \
                         PATH (on Debian/Ubuntu: sudo apt-get install redis-server)."
                    ),
                );
                Store::Memory(addr)
            }
            (found, false) => {
                say(out, format!("No Redis answers at {addr}."));
                suggest_start = found.is_some();
                Store::Memory(addr)
            }
        },
    };

    let file = layout.statestore_file();
    let content = component_text(&store);
    let written = write_component(layout, &content, args.force)?;
    let what = describe(&store);
    let shown = tilde(&file);
    let line = match &written {
        Written::Created => format!("Wrote {shown}: {what}."),
        Written::Unchanged => format!("{shown} already holds {what}: nothing changed."),
        Written::Updated => format!("Updated {shown}: now {what}."),
        Written::KeptEdited => format!(
            "Kept {shown}: it was edited since statecar init wrote it (or was not written by \
             it). statecar init would write {what}; `statecar init --force` replaces the file \
             (saving yours as statestore.yaml.bak)."
        ),
        Written::Replaced(backup) => format!(
            "Replaced {shown} (--force): now {what}. The previous file is saved as {}.",
            tilde(backup)
        ),
    };
    say(out, line);
    if matches!(store, Store::Memory(_)) && written != Written::KeptEdited {
        say(
            out,
            "The in-memory store keeps data inside each sidecar: it is lost when the sidecar \
             stops, and sidecars do not share it."
                .to_string(),
        );
        if suggest_start {
            say(
                out,
                format!(
                    "To use Redis instead, start a private redis-server: statecar init \
                     --start-redis{}",
                    address_flag(&args.redis_address)
                ),
            );
        }
    }
    say(out, String::new());
    say(
        out,
        "Next: statecar run --app-id myapp -- python3 app.py   (your app finds the sidecar at \
         $DAPR_HTTP_PORT)"
            .to_string(),
    );
    Ok(())
}

/// `statecar uninstall`.
pub fn uninstall(
    args: &UninstallArgs,
    layout: &Layout,
    out: &mut dyn Write,
) -> Result<(), DevError> {
    stop_redis(layout, out, "")?;
    if args.all {
        match std::fs::remove_dir_all(&layout.root) {
            Ok(()) => say(out, format!("Removed {}.", tilde(&layout.root))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                say(out, format!("{} does not exist.", tilde(&layout.root)))
            }
            Err(e) => return Err(DevError::io("cannot remove", &layout.root, e)),
        }
    } else if layout.root.exists() {
        say(
            out,
            format!(
                "Kept {} (components, Redis data): `statecar uninstall --all` removes it.",
                tilde(&layout.root)
            ),
        );
    }
    Ok(())
}

fn stop_redis(layout: &Layout, out: &mut dyn Write, again: &str) -> Result<(), DevError> {
    match redis::stop_private(layout)? {
        Stopped::Stopped(pid) => {
            say(
                out,
                format!("Stopped the private redis-server (pid {pid})."),
            );
            if !again.is_empty() {
                say(
                    out,
                    format!("Its data stays in {}; {again}.", tilde(&layout.redis_dir())),
                );
            }
        }
        Stopped::NotRunning => say(out, "No private redis-server is running.".to_string()),
        Stopped::StalePidFile(path) => say(
            out,
            format!(
                "No private redis-server is running (removed the stale pid file {}).",
                tilde(&path)
            ),
        ),
    }
    Ok(())
}

fn address_flag(given: &str) -> String {
    if given == "localhost:6379" {
        String::new()
    } else {
        format!(" --redis-address {given}")
    }
}

fn say(out: &mut dyn Write, line: String) {
    let _ = writeln!(out, "{line}");
}

fn describe(store: &Store) -> String {
    match store {
        Store::Redis(addr) => format!("a state.redis store \"statestore\" at {addr}"),
        Store::Memory(_) => "an in-memory store \"statestore\" (state.in-memory)".to_string(),
    }
}

/// The component file for `store`: the same text for the same outcome, so that reruns compare
/// equal.
fn component_text(store: &Store) -> String {
    let (comment, spec) = match store {
        Store::Redis(addr) => (
            "# The default state store, written by `statecar init` (as `dapr init` writes Dapr's).\n"
                .to_string(),
            format!(
                "  type: state.redis\n  version: v1\n  metadata:\n  - name: redisHost\n    \
                 value: {addr}\n  - name: redisPassword\n    value: \"\"\n  - name: \
                 actorStateStore\n    value: \"false\"\n"
            ),
        ),
        Store::Memory(addr) => (
            format!(
                "# The default state store, written by `statecar init`. No Redis answered at {addr},\n\
                 # so it is in memory: each sidecar keeps its own data and loses it when it stops.\n\
                 # `statecar init --start-redis` starts a private Redis and switches to it.\n"
            ),
            "  type: state.in-memory\n  version: v1\n  metadata:\n  - name: actorStateStore\n    \
             value: \"false\"\n"
                .to_string(),
        ),
    };
    format!(
        "{comment}# statecar init keeps this file once you edit it (--force replaces it).\n\
         apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n{spec}"
    )
}

/// Writes statestore.yaml unless it already says `content` or the user edited it.
fn write_component(layout: &Layout, content: &str, force: bool) -> Result<Written, DevError> {
    let file = layout.statestore_file();
    let last = layout.last_written_file();
    let current = match std::fs::read_to_string(&file) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(DevError::io("cannot read", &file, e)),
    };
    let last_text = std::fs::read_to_string(&last).ok();
    let written = match current {
        None => Written::Created,
        Some(text) if text == content => {
            if last_text.as_deref() != Some(content) {
                write_atomic(&last, content)?;
            }
            return Ok(Written::Unchanged);
        }
        Some(text) if last_text.as_deref() == Some(text.as_str()) => Written::Updated,
        Some(_) if !force => return Ok(Written::KeptEdited),
        Some(text) => {
            let backup = file.with_extension("yaml.bak");
            write_atomic(&backup, &text)?;
            Written::Replaced(backup)
        }
    };
    write_atomic(&file, content)?;
    write_atomic(&last, content)?;
    Ok(written)
}

/// Writes through a temporary file and a rename, so that a reader never sees half a file.
fn write_atomic(path: &Path, content: &str) -> Result<(), DevError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DevError::io("cannot create", dir, e))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).map_err(|e| DevError::io("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| DevError::io("cannot write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::load_dirs;
    use crate::components::loader::{LoadContext, StoreKind};

    fn addr(s: &str) -> RedisAddress {
        RedisAddress::parse(s).expect("address")
    }

    fn load(layout: &Layout) -> Vec<crate::components::loader::ComponentConfig> {
        let env = |_: &str| None;
        let ctx = LoadContext {
            app_id: "app",
            namespace: None,
            pod_name: None,
            env: &env,
        };
        load_dirs(&[layout.components_dir()], &ctx)
            .expect("init's file loads")
            .components
    }

    #[test]
    fn both_files_load_with_the_component_loader() {
        let home = tempfile::tempdir().expect("tempdir");
        let layout = Layout::under_home(home.path());
        let redis = Store::Redis(addr("127.0.0.1:7001"));
        assert_eq!(
            write_component(&layout, &component_text(&redis), false).expect("write"),
            Written::Created
        );
        let loaded = load(&layout);
        assert_eq!(loaded.len(), 1);
        assert_eq!(
            (loaded[0].name.as_str(), loaded[0].component_type.as_str()),
            ("statestore", "state.redis")
        );
        match &loaded[0].kind {
            StoreKind::Redis(md) => assert!(md.password.is_none(), "empty password is none"),
            other => panic!("expected redis, got {other:?}"),
        }
        assert!(component_text(&redis).contains("value: 127.0.0.1:7001"));

        let memory = Store::Memory(addr("localhost:6379"));
        assert_eq!(
            write_component(&layout, &component_text(&memory), false).expect("write"),
            Written::Updated,
            "init's own file follows the outcome"
        );
        let loaded = load(&layout);
        assert_eq!(loaded[0].component_type, "state.in-memory");
        assert_eq!(loaded[0].kind, StoreKind::Memory);
    }

    #[test]
    fn edited_files_are_kept_unless_forced() {
        let home = tempfile::tempdir().expect("tempdir");
        let layout = Layout::under_home(home.path());
        let text = component_text(&Store::Memory(addr("localhost:6379")));
        assert_eq!(
            write_component(&layout, &text, false).expect("write"),
            Written::Created
        );
        assert_eq!(
            write_component(&layout, &text, false).expect("write"),
            Written::Unchanged
        );
        let edited = format!("{text}# mine\n");
        std::fs::write(layout.statestore_file(), &edited).expect("edit");
        assert_eq!(
            write_component(&layout, &text, false).expect("write"),
            Written::KeptEdited
        );
        assert_eq!(
            std::fs::read_to_string(layout.statestore_file()).expect("read"),
            edited
        );
        let backup = layout.components_dir().join("statestore.yaml.bak");
        assert_eq!(
            write_component(&layout, &text, true).expect("write"),
            Written::Replaced(backup.clone())
        );
        assert_eq!(
            std::fs::read_to_string(layout.statestore_file()).expect("read"),
            text
        );
        assert_eq!(std::fs::read_to_string(&backup).expect("backup"), edited);
        // The backup is not a component file the sidecar would load.
        assert_eq!(load(&layout).len(), 1);
    }

    #[test]
    fn a_file_init_did_not_write_is_kept() {
        let home = tempfile::tempdir().expect("tempdir");
        let layout = Layout::under_home(home.path());
        std::fs::create_dir_all(layout.components_dir()).expect("mkdir");
        std::fs::write(layout.statestore_file(), "# someone else's\n").expect("write");
        let text = component_text(&Store::Redis(addr("localhost:6379")));
        assert_eq!(
            write_component(&layout, &text, false).expect("write"),
            Written::KeptEdited
        );
    }
}
