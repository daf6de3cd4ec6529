//! Components: loading them (from a directory in standalone mode, from the operator in
//! Kubernetes mode), turning them into live stores, and the registry the API reads them from.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::store::Store;

pub mod bounded_yaml;
pub mod init;
pub mod loader;

pub use init::{InitError, init_all, init_each};
pub use loader::{ComponentConfig, LoadError, StoreKind, load_dirs};

/// How user keys become store keys (Dapr's `keyPrefix` metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPrefix {
    None,
    /// The prefix without the `||` separator.
    Prefix(String),
}

impl KeyPrefix {
    /// Resolves a `keyPrefix` value (already lower-cased) for one store.
    pub fn resolve(mode: &str, store: &str, app_id: &str, namespace: Option<&str>) -> Self {
        let app = |p: String| {
            if app_id.is_empty() {
                KeyPrefix::None
            } else {
                KeyPrefix::Prefix(p)
            }
        };
        match mode {
            "" | "appid" => app(app_id.to_string()),
            "name" => KeyPrefix::Prefix(store.to_string()),
            "namespace" => match namespace {
                Some(ns) if !ns.is_empty() => app(format!("{ns}.{app_id}")),
                _ => app(app_id.to_string()),
            },
            "none" => KeyPrefix::None,
            custom => KeyPrefix::Prefix(custom.to_string()),
        }
    }

    pub fn apply(&self, key: &str) -> String {
        match self {
            KeyPrefix::None => key.to_string(),
            KeyPrefix::Prefix(p) => {
                let mut s = String::with_capacity(p.len() + 2 + key.len());
                s.push_str(p);
                s.push_str("||");
                s.push_str(key);
                s
            }
        }
    }
}

/// A live state store as the API sees it.
pub struct StoreEntry {
    pub name: String,
    pub component_type: String,
    pub version: String,
    pub store: Arc<dyn Store>,
    pub prefix: KeyPrefix,
    /// TTL for writes that carry none (`ttlInSeconds` component metadata).
    pub default_ttl: Option<i64>,
}

/// The set of stores in effect. Replaced as a whole when configuration changes.
#[derive(Default)]
pub struct Stores {
    pub by_name: HashMap<String, Arc<StoreEntry>>,
}

impl Stores {
    pub fn new(entries: impl IntoIterator<Item = StoreEntry>) -> Self {
        Self {
            by_name: entries
                .into_iter()
                .map(|e| (e.name.clone(), Arc::new(e)))
                .collect(),
        }
    }
}

/// Lock-free reads on the request path; configuration changes swap the whole set atomically.
pub struct Registry {
    stores: ArcSwap<Stores>,
}

impl Registry {
    pub fn new(stores: Stores) -> Self {
        Self {
            stores: ArcSwap::from_pointee(stores),
        }
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<Stores>> {
        self.stores.load()
    }

    /// Puts a new set in place and returns the old one, for the caller to close.
    pub fn swap(&self, stores: Stores) -> Arc<Stores> {
        self.stores.swap(Arc::new(stores))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_prefix_modes() {
        let r = |mode, ns| KeyPrefix::resolve(mode, "store", "app", ns).apply("k");
        assert_eq!(r("", None), "app||k");
        assert_eq!(r("appid", None), "app||k");
        assert_eq!(r("name", None), "store||k");
        assert_eq!(r("namespace", Some("prod")), "prod.app||k");
        assert_eq!(r("namespace", None), "app||k");
        assert_eq!(r("none", None), "k");
        assert_eq!(r("myprefix", None), "myprefix||k");
        assert_eq!(KeyPrefix::resolve("appid", "s", "", None).apply("k"), "k");
    }
}
