use std::path::Path;

use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "REDIS_HOST" => Some("envhost:6400".into()),
        "DAPR_API_TOKEN" => Some("tok-5eb2".into()),
        _ => None,
    }
}

fn ctx() -> LoadContext<'static> {
    LoadContext {
        app_id: "myapp",
        namespace: None,
        pod_name: None,
        env: &env,
    }
}

fn load(text: &str) -> Result<Loaded, LoadError> {
    let mut loaded = Loaded::default();
    load_text(Path::new("/etc/c/store.yaml"), text, &ctx(), &mut loaded)?;
    Ok(loaded)
}

fn error(text: &str) -> String {
    load(text).expect_err("expected a load error").to_string()
}

const REDIS: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.redis
  version: v1
  initTimeout: 10s
  metadata:
  - name: redisHost
    value: localhost:6379
  - name: redisPassword
    value: ""
  - name: actorStateStore
    value: "true"
  - name: redisDB
    value: 3
  - name: keyPrefix
    value: MyPrefix
"#;

#[test]
fn redis_component() {
    let loaded = load(REDIS).unwrap();
    let [c] = &loaded.components[..] else {
        panic!("one component expected: {loaded:?}")
    };
    assert_eq!(c.name, "statestore");
    assert_eq!(c.component_type, "state.redis");
    assert_eq!(c.init_timeout, Duration::from_secs(10));
    assert_eq!(c.key_prefix, "myprefix");
    let StoreKind::Redis(md) = &c.kind else {
        panic!("redis expected")
    };
    assert_eq!(md.host, "localhost:6379");
    assert_eq!(md.db, 3);
    assert_eq!(md.password, None);
}

#[test]
fn multi_document_files_skip_other_kinds() {
    let text = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n---\n{REDIS}\n---\n\
         apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: mem\n\
         spec:\n  type: state.in-memory\n  version: v1\n"
    );
    let loaded = load(&text).unwrap();
    let names: Vec<_> = loaded.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["statestore", "mem"]);
    assert_eq!(loaded.components[1].kind, StoreKind::Memory);
}

#[test]
fn scopes_and_namespaces_filter() {
    let scoped = format!("{REDIS}scopes:\n- otherapp\n");
    let loaded = load(&scoped).unwrap();
    assert!(loaded.components.is_empty());
    assert!(loaded.notes[0].contains("not scoped"));

    let in_scope = format!("{REDIS}scopes:\n- myapp\n");
    assert_eq!(load(&in_scope).unwrap().components.len(), 1);

    let namespaced = REDIS.replace("name: statestore", "name: statestore\n  namespace: prod");
    let mut loaded = Loaded::default();
    let ctx = LoadContext {
        namespace: Some("dev"),
        ..ctx()
    };
    load_text(Path::new("f.yaml"), &namespaced, &ctx, &mut loaded).unwrap();
    assert!(loaded.components.is_empty());
}

#[test]
fn env_refs_and_templates() {
    let text = REDIS
        .replace("value: localhost:6379", "envRef: REDIS_HOST")
        .replace("value: MyPrefix", "value: \"{appID}-x\"");
    let c = &load(&text).unwrap().components[0];
    let StoreKind::Redis(md) = &c.kind else {
        panic!()
    };
    assert_eq!(md.host, "envhost:6400");
    assert_eq!(c.key_prefix, "myapp-x");
}

#[test]
fn errors_name_file_component_and_field() {
    let e = error(&REDIS.replace("value: 3", "value: abc"));
    assert!(e.contains("/etc/c/store.yaml"), "{e}");
    assert!(e.contains("\"statestore\""), "{e}");
    assert!(e.contains("redisDB"), "{e}");

    let e = error(&REDIS.replace("state.redis", "state.cosmosdb"));
    assert!(
        e.contains("spec.type") && e.contains("state.cosmosdb"),
        "{e}"
    );

    let e = error(&REDIS.replace("value: localhost:6379", "envRef: DAPR_API_TOKEN"));
    assert!(
        e.contains("redisHost") && e.contains("DAPR_API_TOKEN"),
        "{e}"
    );
    assert!(!e.contains("tok-5eb2"), "the value must not leak: {e}");

    let e = error(&REDIS.replace("value: localhost:6379", "envRef: NOPE"));
    assert!(e.contains("NOPE is not set"), "{e}");

    let e = error(&REDIS.replace(
        "value: localhost:6379",
        "secretKeyRef:\n      name: s\n      key: k",
    ));
    assert!(e.contains("secretKeyRef"), "{e}");

    let e = error(&REDIS.replace("initTimeout: 10s", "initTimeout: soon"));
    assert!(e.contains("spec.initTimeout"), "{e}");

    let e = error(&REDIS.replace("version: v1", "version: v2"));
    assert!(e.contains("spec.version"), "{e}");

    let e = error(&REDIS.replace("value: MyPrefix", "value: a||b"));
    assert!(e.contains("keyPrefix"), "{e}");

    let e = error(&REDIS.replace("name: statestore", "name: a/b"));
    assert!(e.contains("metadata.name"), "{e}");

    // A structurally wrong manifest names the path of the bad field.
    let e = error(&REDIS.replace(
        "  metadata:\n  - name: redisHost",
        "  metadata: 5\n  x:\n  - name: redisHost",
    ));
    assert!(e.contains("spec.metadata"), "{e}");

    let e = error("a: [\n");
    assert!(e.contains("not valid YAML"), "{e}");
}

#[test]
fn ignore_errors_skips_the_component() {
    let text = REDIS
        .replace("value: 3", "value: abc")
        .replace("version: v1", "version: v1\n  ignoreErrors: true");
    let loaded = load(&text).unwrap();
    assert!(loaded.components.is_empty());
    assert!(loaded.skipped[0].to_string().contains("redisDB"));
}

#[test]
fn non_state_components_are_skipped_with_a_note() {
    let text = REDIS.replace("state.redis", "pubsub.redis");
    let loaded = load(&text).unwrap();
    assert!(loaded.components.is_empty());
    assert!(loaded.notes[0].contains("pubsub.redis"));
}

#[test]
fn directories_load_yaml_files_and_reject_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), REDIS).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not yaml [").unwrap();
    let loaded = load_dirs(&[dir.path().to_path_buf()], &ctx()).unwrap();
    assert_eq!(loaded.components.len(), 1);

    std::fs::write(dir.path().join("b.YML"), REDIS).unwrap();
    let e = load_dirs(&[dir.path().to_path_buf()], &ctx()).unwrap_err();
    assert!(matches!(e, LoadError::Duplicate { .. }), "{e}");
    assert!(
        e.to_string().contains("a.yaml") && e.to_string().contains("b.YML"),
        "{e}"
    );

    let e = load_dirs(&[dir.path().join("missing")], &ctx()).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

fn component(yaml: &str) -> Component {
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn operator_components_validate_like_files() {
    let ctx = LoadContext {
        namespace: Some("prod"),
        pod_name: Some("pod-1"),
        ..ctx()
    };
    let good = component(&REDIS.replace("value: MyPrefix", "value: \"{podName}\""));
    let mut loaded = Loaded::default();
    load_component(&good, "operator", &ctx, &mut loaded).unwrap();
    let [c] = &loaded.components[..] else {
        panic!("{loaded:?}")
    };
    assert_eq!(c.source, "operator");
    assert_eq!(c.key_prefix, "pod-1");

    // The same error as from a file, naming the source instead of a path.
    let bad = component(&REDIS.replace("value: 3", "value: abc"));
    let e = load_component(&bad, "operator", &ctx, &mut Loaded::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("operator: component \"statestore\"") && e.contains("redisDB"),
        "{e}"
    );
}

#[test]
fn one_bad_component_in_a_list_leaves_the_others() {
    let mem = |name: &str| {
        component(&format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\n\
             spec:\n  type: state.in-memory\n  version: v1\n"
        ))
    };
    let bad = component(
        &REDIS
            .replace("name: statestore", "name: bad")
            .replace("value: 3", "value: x"),
    );
    let list = [mem("a"), bad, mem("b"), mem("a")];
    let (loaded, errors) = load_list(&list, "operator", &ctx());
    let names: Vec<_> = loaded.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].to_string().contains("\"bad\""), "{}", errors[0]);
    assert!(
        matches!(errors[1], LoadError::Duplicate { .. }),
        "{}",
        errors[1]
    );

    // Existing file behaviour is unchanged: the first invalid document fails the file.
    assert!(load(&REDIS.replace("value: 3", "value: x")).is_err());
}
