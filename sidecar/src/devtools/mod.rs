//! Developer commands of the `statecar` binary, as the Dapr CLI's on a laptop, without Docker:
//! `statecar init` (a default state store under `~/.statecar`, optionally a private
//! `redis-server`), `statecar run` (an app with its sidecar) and `statecar uninstall`.

pub mod init;
pub mod process;
pub mod redis;
pub mod run;

use std::path::{Path, PathBuf};

/// What the developer commands can fail with. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("HOME is not set: statecar keeps its files under $HOME/.statecar; set HOME and retry")]
    NoHome,
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--redis-address {0:?} is not HOST:PORT (e.g. localhost:6379)")]
    BadAddress(String),
    #[error(
        "--start-redis runs Redis on this machine, bound to 127.0.0.1, but --redis-address {0:?} \
         names another host: use localhost:PORT or 127.0.0.1:PORT"
    )]
    NotLocal(String),
    #[error("the private redis-server did not start: {0}")]
    RedisStart(String),
    #[error("could not stop the private redis-server: {0}")]
    RedisStop(String),
    #[error("cannot find a free loopback port for the sidecar's gRPC API")]
    NoFreePort(#[source] std::io::Error),
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("the sidecar did not start: {0}")]
    SidecarStart(String),
    #[error("127.0.0.1:{0} is already in use (another sidecar?): pick a free --dapr-http-port")]
    PortInUse(u16),
}

impl DevError {
    pub(crate) fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        DevError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The files statecar's developer commands keep under `~/.statecar`.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `~/.statecar`
    pub root: PathBuf,
}

impl Layout {
    /// The layout under `$HOME`; an unset or empty HOME is an error.
    pub fn from_env() -> Result<Self, DevError> {
        match std::env::var_os("HOME") {
            Some(home) if !home.is_empty() => Ok(Self::under_home(Path::new(&home))),
            _ => Err(DevError::NoHome),
        }
    }

    pub fn under_home(home: &Path) -> Self {
        Layout {
            root: home.join(".statecar"),
        }
    }

    /// `~/.statecar/components`: what the sidecar reads when no `--resources-path` is given.
    pub fn components_dir(&self) -> PathBuf {
        self.root.join("components")
    }

    /// `~/.statecar/components/statestore.yaml`
    pub fn statestore_file(&self) -> PathBuf {
        self.components_dir().join(STATESTORE_FILE)
    }

    /// A copy of what `statecar init` last wrote, to tell a user's edit from init's own file.
    /// Outside the components directory, so that the sidecar never loads it.
    pub fn last_written_file(&self) -> PathBuf {
        self.root.join("init").join(STATESTORE_FILE)
    }

    /// `~/.statecar/redis`: the private redis-server's data, config, log and pid file.
    pub fn redis_dir(&self) -> PathBuf {
        self.root.join("redis")
    }

    pub fn redis_pid_file(&self) -> PathBuf {
        self.redis_dir().join("redis.pid")
    }

    pub fn redis_log_file(&self) -> PathBuf {
        self.redis_dir().join("redis.log")
    }

    pub fn redis_conf_file(&self) -> PathBuf {
        self.redis_dir().join("redis.conf")
    }
}

const STATESTORE_FILE: &str = "statestore.yaml";

/// `~` for paths under `home`, for messages.
pub(crate) fn tilde(path: &Path) -> String {
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty())
        && let Ok(rest) = path.strip_prefix(&home)
    {
        return format!("~/{}", rest.display());
    }
    path.display().to_string()
}
