//! Component files: arbitrary text through the bounded YAML reader and the loader
//! (`statecar::components`). Must never panic, and (with libFuzzer's -timeout and -rss_limit_mb)
//! never take long or much memory, whatever the aliases, nesting or sizes.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use statecar::components::bounded_yaml;
use statecar::components::loader::{LoadContext, Loaded, load_text};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = bounded_yaml::parse_documents(text);
    let env = |name: &str| (name == "REDIS_HOST").then(|| "127.0.0.1:6379".to_string());
    let ctx = LoadContext {
        app_id: "fuzzapp",
        namespace: Some("default"),
        pod_name: None,
        env: &env,
    };
    let mut loaded = Loaded::default();
    let _ = load_text(Path::new("fuzz.yaml"), text, &ctx, &mut loaded);
});
