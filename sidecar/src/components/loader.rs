//! Reads Dapr component manifests from directories (standalone mode) and validates them into
//! [`ComponentConfig`]s. Every error names the file, the component and the field.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use statecar_crds::component::value_text;
use statecar_crds::validate::{validate, validate_name};
use statecar_crds::{Component, MetadataMap};

use super::bounded_yaml::{self, YamlError};

pub use statecar_crds::validate::DEFAULT_INIT_TIMEOUT;
/// What kind of store a component asks for, with its validated settings.
pub use statecar_crds::validate::StoreSettings as StoreKind;

#[derive(Debug, Clone, PartialEq)]
pub struct ComponentConfig {
    pub name: String,
    /// Lower-cased, e.g. `state.redis`.
    pub component_type: String,
    pub version: String,
    /// Where it came from (a file path), for messages.
    pub source: String,
    pub ignore_errors: bool,
    pub init_timeout: Duration,
    pub kind: StoreKind,
    /// The lower-cased `keyPrefix` mode (empty = appid).
    pub key_prefix: String,
    pub default_ttl: Option<i64>,
}

impl ComponentConfig {
    /// The in-memory store `statestore` used when no components are configured at all.
    pub fn embedded_default() -> Self {
        Self {
            name: "statestore".into(),
            component_type: "state.in-memory".into(),
            version: "v1".into(),
            source: "built-in default".into(),
            ignore_errors: false,
            init_timeout: DEFAULT_INIT_TIMEOUT,
            kind: StoreKind::Memory,
            key_prefix: String::new(),
            default_ttl: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: document {doc} is not valid YAML: {message}")]
    Yaml {
        path: PathBuf,
        doc: usize,
        message: String,
    },
    /// The file cannot be used as it is: over a limit of [`bounded_yaml`], or not UTF-8
    /// (`message` says which).
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: component {name:?}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        name: String,
        field: String,
        message: String,
    },
    #[error("component {name:?} is defined twice: in {first} and in {second}")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
}

/// Facts about this sidecar that manifests may refer to.
pub struct LoadContext<'a> {
    pub app_id: &'a str,
    /// `NAMESPACE` env: manifests from other namespaces are skipped.
    pub namespace: Option<&'a str>,
    pub pod_name: Option<&'a str>,
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

/// The result of loading: the components to start, and the ones skipped with a reason.
#[derive(Debug, Default)]
pub struct Loaded {
    pub components: Vec<ComponentConfig>,
    /// Components with `ignoreErrors: true` that failed validation.
    pub skipped: Vec<LoadError>,
    /// Notes worth a log line (non-state components, out-of-scope components).
    pub notes: Vec<String>,
}

/// Loads every `.yaml`/`.yml` file directly inside each directory, in name order.
pub fn load_dirs(dirs: &[PathBuf], ctx: &LoadContext<'_>) -> Result<Loaded, LoadError> {
    let mut loaded = Loaded::default();
    for dir in dirs {
        let read = |source| LoadError::Read {
            path: dir.clone(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read)? {
            let path = entry.map_err(read)?.path();
            let yaml = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
            if yaml && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        for path in files {
            let text = bounded_yaml::read_file(&path).map_err(|e| yaml_error(&path, e))?;
            load_text(&path, &text, ctx, &mut loaded)?;
        }
    }
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for c in &loaded.components {
        if let Some(first) = seen.insert(&c.name, &c.source) {
            return Err(LoadError::Duplicate {
                name: c.name.clone(),
                first: first.to_string(),
                second: c.source.clone(),
            });
        }
    }
    Ok(loaded)
}

/// Loads the documents of one file into `loaded`.
pub fn load_text(
    path: &Path,
    text: &str,
    ctx: &LoadContext<'_>,
    loaded: &mut Loaded,
) -> Result<(), LoadError> {
    let docs = bounded_yaml::parse_documents(text).map_err(|e| yaml_error(path, e))?;
    for value in docs {
        let field = |k: &str| value.get(k).and_then(|v| v.as_str()).unwrap_or_default();
        if field("apiVersion") != statecar_crds::component::API_VERSION
            || field("kind") != statecar_crds::component::KIND
        {
            continue;
        }
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_string();
        let component: Component =
            serde_path_to_error::deserialize(value).map_err(|e| LoadError::Invalid {
                path: path.to_path_buf(),
                name: name.clone(),
                field: e.path().to_string(),
                message: e.into_inner().to_string(),
            })?;
        load_component(&component, &path.display().to_string(), ctx, loaded)?;
    }
    Ok(())
}

fn yaml_error(path: &Path, e: YamlError) -> LoadError {
    let path = path.to_path_buf();
    match e {
        YamlError::Limit { doc: 0, message } | YamlError::Io(message) => {
            LoadError::File { path, message }
        }
        YamlError::Limit { doc, message } => LoadError::File {
            path,
            message: format!("document {doc}: {message}"),
        },
        YamlError::Syntax { doc, message } => LoadError::Yaml { path, doc, message },
    }
}

/// Validates one component manifest from `source` (a file path, or e.g. `operator`) into
/// `loaded`, exactly as a document of a component file: out-of-scope, other-namespace and
/// non-state components are skipped (with a note), an invalid one is an error unless it has
/// `ignoreErrors: true`.
pub fn load_component(
    component: &Component,
    source: &str,
    ctx: &LoadContext<'_>,
    loaded: &mut Loaded,
) -> Result<(), LoadError> {
    let name = &component.metadata.name;
    let invalid = |field: String, message: String| LoadError::Invalid {
        path: PathBuf::from(source),
        name: name.clone(),
        field,
        message,
    };
    if !component.in_scope(ctx.app_id) {
        loaded.notes.push(format!(
            "component {name:?} in {source} is not scoped to app {:?}; skipped",
            ctx.app_id
        ));
        return Ok(());
    }
    if let (Some(want), Some(have)) = (ctx.namespace, component.metadata.namespace.as_deref())
        && want != have
    {
        return Ok(());
    }
    let category = component.component_type();
    if !category.starts_with("state.") && !category.is_empty() {
        loaded.notes.push(format!(
            "component {name:?} in {source} has type {}; statecar serves only state stores, skipped",
            component.spec.type_
        ));
        return Ok(());
    }
    match resolve(component, source, ctx) {
        Ok(config) => loaded.components.push(config),
        Err((field, message)) if component.spec.ignore_errors => {
            loaded.skipped.push(invalid(field, message));
        }
        Err((field, message)) => return Err(invalid(field, message)),
    }
    Ok(())
}

/// Validates a list of components from one `source` (the operator's snapshot, the config
/// cache). Unlike files, one invalid component does not fail the rest: its error is returned
/// beside the components that did validate. A repeated name keeps the first.
pub fn load_list(
    components: &[Component],
    source: &str,
    ctx: &LoadContext<'_>,
) -> (Loaded, Vec<LoadError>) {
    let mut loaded = Loaded::default();
    let mut errors = Vec::new();
    for component in components {
        let name = &component.metadata.name;
        if loaded.components.iter().any(|c| &c.name == name) {
            errors.push(LoadError::Duplicate {
                name: name.clone(),
                first: source.to_string(),
                second: source.to_string(),
            });
            continue;
        }
        if let Err(e) = load_component(component, source, ctx, &mut loaded) {
            errors.push(e);
        }
    }
    (loaded, errors)
}

/// Validates one component. Errors are `(field path, message)`.
fn resolve(
    c: &Component,
    source: &str,
    ctx: &LoadContext<'_>,
) -> Result<ComponentConfig, (String, String)> {
    let name = &c.metadata.name;
    validate_name(name).map_err(|e| (e.field, e.message))?;
    let mut md = MetadataMap::new();
    for (i, item) in c.spec.metadata.iter().enumerate() {
        let value = metadata_value(item, ctx)
            .map_err(|m| (format!("spec.metadata[{i}] ({})", item.name), m))?;
        md.insert(item.name.clone(), value);
    }
    let valid = validate(&c.spec, &md).map_err(|e| (e.field, e.message))?;
    Ok(ComponentConfig {
        name: name.clone(),
        component_type: valid.component_type,
        version: valid.version,
        source: source.to_string(),
        ignore_errors: c.spec.ignore_errors,
        init_timeout: valid.init_timeout,
        kind: valid.settings,
        key_prefix: valid.key_prefix,
        default_ttl: valid.default_ttl,
    })
}

/// The text value of one metadata entry, from `value` or `envRef`.
fn metadata_value(
    item: &statecar_crds::MetadataItem,
    ctx: &LoadContext<'_>,
) -> Result<String, String> {
    if let Some(v) = item.value.as_ref().filter(|v| !v.is_null()) {
        return substitute(&value_text(v), ctx);
    }
    if let Some(var) = item.env_ref.as_deref().filter(|v| !v.is_empty()) {
        let upper = var.to_ascii_uppercase();
        if upper.starts_with("DAPR_") || upper == "APP_API_TOKEN" {
            return Err(format!(
                "envRef may not read {var}: it holds a sidecar secret"
            ));
        }
        return (ctx.env)(var)
            .ok_or_else(|| format!("envRef: environment variable {var} is not set"));
    }
    if item.secret_key_ref.is_some() {
        return Err(
            "secretKeyRef needs a secret store, which standalone mode does not have; use value or envRef"
                .into(),
        );
    }
    Ok(String::new())
}

/// Dapr's value templates: `{appID}`, `{namespace}` (`<namespace>.<app-id>`), `{podName}`.
fn substitute(value: &str, ctx: &LoadContext<'_>) -> Result<String, String> {
    if !value.contains('{') {
        return Ok(value.to_string());
    }
    let mut out = value.replace("{appID}", ctx.app_id);
    if out.contains("{namespace}") {
        let ns = ctx.namespace.unwrap_or_default();
        out = out.replace("{namespace}", &format!("{ns}.{}", ctx.app_id));
    }
    if out.contains("{podName}") {
        let pod = ctx
            .pod_name
            .ok_or("{podName} is only known when POD_NAME is set")?;
        out = out.replace("{podName}", pod);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "loader_tests.rs"]
mod tests;
