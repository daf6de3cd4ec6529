use super::*;
use crate::components::Registry;

fn component(name: &str, type_: &str, meta: serde_json::Value) -> Component {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"type": type_, "version": "v1", "metadata": meta, "initTimeout": "300ms"},
    }))
    .unwrap()
}

fn memory(name: &str) -> Component {
    component(name, "state.in-memory", serde_json::json!([]))
}

/// A Redis store nobody listens for: it fails to start.
fn dead_redis(name: &str) -> Component {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    component(
        name,
        "state.redis",
        serde_json::json!([{"name": "redisHost", "value": format!("127.0.0.1:{port}")}]),
    )
}

fn snapshot(revision: u64, components: Vec<Component>) -> Snapshot {
    Snapshot {
        revision,
        components,
        malformed: vec![],
    }
}

fn applier(cache: Option<PathBuf>) -> (Arc<AppState>, Applier) {
    let state = Arc::new(AppState::new(
        Arc::new(Registry::new(Stores::default())),
        "app".into(),
        None,
    ));
    state.set_ready(false);
    let a = Applier::new(state.clone(), "app", "ns", "pod-0", cache);
    (state, a)
}

fn entry(state: &AppState, name: &str) -> Option<Arc<StoreEntry>> {
    state.registry.load().by_name.get(name).cloned()
}

#[tokio::test]
async fn snapshots_replace_the_stores() {
    let (state, mut a) = applier(None);
    assert!(!state.is_ready());
    let out = a
        .apply(
            &snapshot(1, vec![memory("a"), memory("b")]),
            Origin::Operator,
        )
        .await;
    assert_eq!(
        out,
        Applied::Changed {
            stores: vec!["a".into(), "b".into()]
        }
    );
    assert!(state.is_ready());
    let a1 = entry(&state, "a").unwrap();
    let b1 = entry(&state, "b").unwrap();

    // Same list again: nothing happens.
    let same = snapshot(2, vec![memory("a"), memory("b")]);
    assert_eq!(a.apply(&same, Origin::Operator).await, Applied::Unchanged);

    // `b` changes, `a` does not, `c` is new: `a` keeps its store, `b` gets a new one.
    let mut b2 = memory("b");
    b2.spec.metadata =
        serde_json::from_value(serde_json::json!([{"name": "keyPrefix", "value": "none"}]))
            .unwrap();
    a.apply(
        &snapshot(3, vec![memory("a"), b2, memory("c")]),
        Origin::Operator,
    )
    .await;
    assert!(Arc::ptr_eq(&a1, &entry(&state, "a").unwrap()));
    assert!(!Arc::ptr_eq(&b1, &entry(&state, "b").unwrap()));
    assert!(entry(&state, "c").is_some());
    // An in-flight request still holds the old `b`, which is otherwise gone.
    assert_eq!(Arc::strong_count(&b1), 1);

    // Removal.
    a.apply(&snapshot(4, vec![memory("c")]), Origin::Operator)
        .await;
    assert!(entry(&state, "a").is_none() && entry(&state, "b").is_none());
    assert!(entry(&state, "c").is_some());
}

#[tokio::test]
async fn a_broken_component_does_not_take_the_others_down() {
    let (state, mut a) = applier(None);
    let invalid = component(
        "bad",
        "state.redis",
        serde_json::json!([{"name": "redisDB", "value": "x"}]),
    );
    let snap = snapshot(1, vec![memory("a"), invalid, dead_redis("down")]);
    let out = a.apply(&snap, Origin::Operator).await;
    assert_eq!(
        out,
        Applied::Changed {
            stores: vec!["a".into()]
        }
    );
    // The others are served, but the sidecar is not ready while "down" has not started.
    assert!(!state.is_ready());
    assert_eq!(a.failed(), ["down"]);
    assert_eq!(a.until_retry().map(|d| d <= RETRY_FIRST), Some(true));

    // A failed component is retried (not before its time), keeping the running ones, and
    // each failed retry doubles the wait for the next.
    let a1 = entry(&state, "a").unwrap();
    a.retry(Duration::from_secs(3600)).await;
    assert_eq!(a.failed(), ["down"]);
    a.retry(Duration::ZERO).await;
    assert_eq!(a.failed(), ["down"]);
    assert!(Arc::ptr_eq(&a1, &entry(&state, "a").unwrap()));
    let wait = a.until_retry().expect("a retry is due later");
    assert!(wait > RETRY_FIRST && wait <= 2 * RETRY_FIRST, "{wait:?}");
    assert!(!state.is_ready());

    // The same snapshot again is not "unchanged" while something failed.
    assert!(matches!(
        a.apply(&snap, Origin::Operator).await,
        Applied::Changed { .. }
    ));

    // Once the failing component is gone (or has started), the sidecar is ready.
    a.apply(&snapshot(2, vec![memory("a")]), Origin::Operator)
        .await;
    assert!(state.is_ready());
    assert_eq!(a.until_retry(), None);

    // After that, a change whose component fails to start is retried, and the sidecar stays
    // ready with the others.
    a.apply(
        &snapshot(3, vec![memory("a"), dead_redis("down")]),
        Origin::Operator,
    )
    .await;
    assert!(state.is_ready());
    assert_eq!(a.failed(), ["down"]);
}

#[tokio::test]
async fn a_component_that_may_be_skipped_does_not_hold_readiness() {
    let (state, mut a) = applier(None);
    let mut optional = dead_redis("optional");
    optional.spec.ignore_errors = true;
    a.apply(&snapshot(1, vec![memory("a"), optional]), Origin::Operator)
        .await;
    assert!(state.is_ready());
    // It is still retried.
    assert_eq!(a.failed(), ["optional"]);
}

#[tokio::test]
async fn the_cache_holds_the_last_operator_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let (_, mut a) = applier(Some(path.clone()));
    assert!(!a.apply_cache().await, "no cache yet");
    a.apply(&snapshot(5, vec![memory("a")]), Origin::Operator)
        .await;
    let cached = read_cache(&path).unwrap().unwrap();
    assert_eq!(cached.revision, 5);
    assert_eq!(cached.components, vec![memory("a")]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // No temp files are left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // A new process starts from it.
    let (state, mut b) = applier(Some(path.clone()));
    assert!(b.apply_cache().await);
    assert!(state.is_ready());
    assert!(entry(&state, "a").is_some());

    // A damaged cache is ignored.
    std::fs::write(&path, "{not json").unwrap();
    let (state, mut c) = applier(Some(path));
    assert!(!c.apply_cache().await);
    assert!(!state.is_ready());
}
