//! One test per supported `dapr.io/*` annotation, plus the parsers behind them.

use serde_json::json;

use super::annotations::{is_truthy, parse_env};
use super::tests::{cfg, decide_skip_or_inject, deny, inject, inject_in, pod_with};
use super::*;

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

#[test]
fn enabled_accepts_the_truthy_set() {
    for v in [
        "true", "TRUE", "True", "1", "t", "T", "y", "yes", "YES", "on", " on ",
    ] {
        assert!(
            decide_skip_or_inject(&pod_with(&[("dapr.io/enabled", v)])).is_none(),
            "{v:?} enables injection"
        );
    }
    for v in ["false", "", "0", "no", "off", "enabled", "truee"] {
        assert_eq!(
            decide_skip_or_inject(&pod_with(&[("dapr.io/enabled", v)])),
            Some(SkipReason::NotEnabled),
            "{v:?} does not enable injection"
        );
    }
    assert!(is_truthy("On") && !is_truthy("2"));
}

#[test]
fn app_id_annotation() {
    let injected = inject(&pod_with(&[("dapr.io/app-id", "basket")]));
    assert_eq!(injected.arg("--app-id").as_deref(), Some("basket"));
    assert_eq!(injected.app_id, "basket");
}

#[test]
fn app_port() {
    let injected = inject(&pod_with(&[("dapr.io/app-port", "8080")]));
    assert_eq!(injected.arg("--app-port").as_deref(), Some("8080"));
    for ignored in ["0", "-1", "http", "70000", ""] {
        let injected = inject(&pod_with(&[("dapr.io/app-port", ignored)]));
        assert!(!injected.has_flag("--app-port"), "{ignored:?}");
    }
}

#[test]
fn grpc_port() {
    let grpc = |injected: &super::tests::Injected| {
        let spec = injected.pod.spec.clone().expect("spec");
        let app_env = spec.containers[0]
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "DAPR_GRPC_PORT")
            .and_then(|e| e.value.clone());
        let declared = injected
            .sidecar()
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("dapr-grpc"))
            .map(|p| p.container_port);
        (injected.arg("--dapr-grpc-port"), app_env, declared)
    };
    let injected = inject(&pod_with(&[("dapr.io/grpc-port", "50010")]));
    assert_eq!(
        grpc(&injected),
        (Some("50010".into()), Some("50010".into()), Some(50010))
    );
    assert!(
        injected.unsupported.is_empty(),
        "{:?}",
        injected.unsupported
    );
    for ignored in ["0", "70000", "grpc", "", "3500", "3501"] {
        let injected = inject(&pod_with(&[("dapr.io/grpc-port", ignored)]));
        assert_eq!(
            grpc(&injected),
            (Some("50001".into()), Some("50001".into()), Some(50001)),
            "{ignored:?}"
        );
    }
}

#[test]
fn config() {
    let injected = inject(&pod_with(&[("dapr.io/config", "tracing")]));
    assert_eq!(injected.arg("--config").as_deref(), Some("tracing"));
    assert!(!inject(&pod_with(&[("dapr.io/config", " ")])).has_flag("--config"));
}

#[test]
fn log_level() {
    for (given, passed) in [
        ("debug", "debug"),
        ("DEBUG", "debug"),
        ("warning", "warn"),
        ("error", "error"),
        ("fatal", "error"),
        ("", "info"),
    ] {
        let injected = inject(&pod_with(&[("dapr.io/log-level", given)]));
        assert_eq!(
            injected.arg("--log-level").as_deref(),
            Some(passed),
            "{given:?}"
        );
    }
    let message = deny(&pod_with(&[("dapr.io/log-level", "verbose")]));
    assert!(message.contains("dapr.io/log-level"), "{message}");
    assert!(message.contains("debug, info, warn or error"), "{message}");
}

#[test]
fn log_as_json() {
    assert!(inject(&pod_with(&[("dapr.io/log-as-json", "true")])).has_flag("--log-as-json"));
    assert!(!inject(&pod_with(&[("dapr.io/log-as-json", "false")])).has_flag("--log-as-json"));
    assert!(!inject(&pod_with(&[])).has_flag("--log-as-json"));
}

#[test]
fn sidecar_image() {
    let injected = inject(&pod_with(&[(
        "dapr.io/sidecar-image",
        "registry.local/statecar:dev",
    )]));
    assert_eq!(
        injected.sidecar().image.as_deref(),
        Some("registry.local/statecar:dev")
    );
    let injected = inject(&pod_with(&[("dapr.io/sidecar-image", "")]));
    assert_eq!(
        injected.sidecar().image.as_deref(),
        Some("ghcr.io/statecar/statecar:0.1.0")
    );
}

fn resources_json(annotations: &[(&str, &str)]) -> serde_json::Value {
    let injected = inject(&pod_with(annotations));
    serde_json::to_value(injected.sidecar().resources.clone()).expect("json")
}

#[test]
fn resource_annotations() {
    assert_eq!(
        resources_json(&[
            ("dapr.io/sidecar-cpu-request", "50m"),
            ("dapr.io/sidecar-cpu-limit", "1"),
            ("dapr.io/sidecar-memory-request", "32Mi"),
            ("dapr.io/sidecar-memory-limit", "256Mi"),
        ]),
        json!({"requests": {"cpu": "50m", "memory": "32Mi"},
               "limits": {"cpu": "1", "memory": "256Mi"}})
    );
    // Only what is set: the defaults are not mixed in.
    assert_eq!(
        resources_json(&[("dapr.io/sidecar-memory-limit", "64Mi")]),
        json!({"limits": {"memory": "64Mi"}})
    );
}

#[test]
fn malformed_resource_annotation_falls_back_to_defaults() {
    let defaults =
        json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}});
    assert_eq!(resources_json(&[]), defaults);
    assert_eq!(
        resources_json(&[
            ("dapr.io/sidecar-cpu-request", "50m"),
            ("dapr.io/sidecar-memory-limit", "256MB"),
        ]),
        defaults,
        "one bad value discards all four"
    );
    assert_eq!(
        resources_json(&[("dapr.io/sidecar-cpu-limit", "one")]),
        defaults
    );
    assert_eq!(
        resources_json(&[
            ("dapr.io/sidecar-memory-request", "1Gi"),
            ("dapr.io/sidecar-memory-limit", "512Mi"),
        ]),
        defaults,
        "a request above its limit would be refused by the API server"
    );
}

#[test]
fn api_token_secret() {
    let injected = inject(&pod_with(&[("dapr.io/api-token-secret", "cart-api-token")]));
    let var = injected
        .sidecar_env("DAPR_API_TOKEN")
        .expect("DAPR_API_TOKEN");
    assert_eq!(
        serde_json::to_value(var).expect("json"),
        json!({"name": "DAPR_API_TOKEN",
               "valueFrom": {"secretKeyRef": {"name": "cart-api-token", "key": "token"}}})
    );
    assert!(
        inject(&pod_with(&[]))
            .sidecar_env("DAPR_API_TOKEN")
            .is_none()
    );
}

#[test]
fn env() {
    let injected = inject(&pod_with(&[(
        "dapr.io/env",
        "GOMAXPROCS=2, LIST=a,b,c,URL=redis://x:6379/0?a=b, NAMESPACE=evil",
    )]));
    let value = |n: &str| injected.sidecar_env(n).and_then(|e| e.value);
    assert_eq!(value("GOMAXPROCS").as_deref(), Some("2"));
    assert_eq!(value("LIST").as_deref(), Some("a,b,c"));
    assert_eq!(value("URL").as_deref(), Some("redis://x:6379/0?a=b"));
    let ns = injected.sidecar_env("NAMESPACE").expect("NAMESPACE");
    assert!(
        ns.value.is_none() && ns.value_from.is_some(),
        "the injector's own NAMESPACE wins"
    );
}

#[test]
fn env_splitting() {
    assert_eq!(parse_env(""), Vec::<(String, String)>::new());
    assert_eq!(parse_env("A=1"), [pair("A", "1")]);
    assert_eq!(parse_env("A=1,B=2"), [pair("A", "1"), pair("B", "2")]);
    assert_eq!(
        parse_env(" A = 1 ,  _B2=x=y"),
        [pair("A", "1"), pair("_B2", "x=y")]
    );
    assert_eq!(parse_env("A=x,y,z"), [pair("A", "x,y,z")]);
    assert_eq!(parse_env("A=x, 9B=1"), [pair("A", "x, 9B=1")]);
    assert_eq!(parse_env("A=,B="), [pair("A", ""), pair("B", "")]);
    assert_eq!(parse_env("junk,B=1"), [pair("B", "1")]);
    assert_eq!(parse_env("A=é,B=ü"), [pair("A", "é"), pair("B", "ü")]);
}

#[test]
fn sidecar_listen_addresses() {
    let flag = |v: &str| {
        inject(&pod_with(&[("dapr.io/sidecar-listen-addresses", v)])).arg("--dapr-listen-addresses")
    };
    assert_eq!(flag("[::1],127.0.0.1").as_deref(), Some("[::1],127.0.0.1"));
    assert_eq!(flag(" ::1 , 0.0.0.0").as_deref(), Some("[::1],0.0.0.0"));
    assert_eq!(flag("0.0.0.0").as_deref(), Some("0.0.0.0"));
    assert_eq!(flag(""), None);
    for bad in ["localhost", "127.0.0.1,", "1.2.3.4:80"] {
        let message = deny(&pod_with(&[("dapr.io/sidecar-listen-addresses", bad)]));
        assert!(
            message.contains("dapr.io/sidecar-listen-addresses"),
            "{message}"
        );
    }
}

#[test]
fn graceful_shutdown_seconds() {
    let flag = |v: &str| {
        inject(&pod_with(&[("dapr.io/graceful-shutdown-seconds", v)]))
            .arg("--dapr-graceful-shutdown-seconds")
    };
    assert_eq!(flag("10").as_deref(), Some("10"));
    assert_eq!(flag("0").as_deref(), Some("0"));
    assert_eq!(flag("-1"), None, "-1 means the sidecar's default");
    assert_eq!(flag("soon"), None);
}

#[test]
fn probe_annotations() {
    let keys = [
        (
            "dapr.io/sidecar-readiness-probe-delay-seconds",
            "readinessProbe",
            "initialDelaySeconds",
        ),
        (
            "dapr.io/sidecar-readiness-probe-timeout-seconds",
            "readinessProbe",
            "timeoutSeconds",
        ),
        (
            "dapr.io/sidecar-readiness-probe-period-seconds",
            "readinessProbe",
            "periodSeconds",
        ),
        (
            "dapr.io/sidecar-readiness-probe-threshold",
            "readinessProbe",
            "failureThreshold",
        ),
        (
            "dapr.io/sidecar-liveness-probe-delay-seconds",
            "livenessProbe",
            "initialDelaySeconds",
        ),
        (
            "dapr.io/sidecar-liveness-probe-timeout-seconds",
            "livenessProbe",
            "timeoutSeconds",
        ),
        (
            "dapr.io/sidecar-liveness-probe-period-seconds",
            "livenessProbe",
            "periodSeconds",
        ),
        (
            "dapr.io/sidecar-liveness-probe-threshold",
            "livenessProbe",
            "failureThreshold",
        ),
    ];
    let defaults = inject(&pod_with(&[]));
    let defaults = serde_json::to_value(defaults.sidecar()).expect("json");
    for (key, probe, field) in keys {
        let injected = inject(&pod_with(&[(key, "42")]));
        let c = serde_json::to_value(injected.sidecar()).expect("json");
        assert_eq!(c[probe][field], 42, "{key}");
        // Nothing else changes.
        let mut expected = defaults.clone();
        expected[probe][field] = json!(42);
        assert_eq!(c, expected, "{key}");
        for ignored in ["-3", "soon", "99999999999"] {
            let injected = inject(&pod_with(&[(key, ignored)]));
            let c = serde_json::to_value(injected.sidecar()).expect("json");
            assert_eq!(c[probe][field], defaults[probe][field], "{key}={ignored}");
        }
    }
}

#[test]
fn seccomp_profile_type() {
    let profile = |v: Option<&str>| {
        let pod = match v {
            Some(v) => pod_with(&[("dapr.io/sidecar-seccomp-profile-type", v)]),
            None => pod_with(&[]),
        };
        let c = serde_json::to_value(inject(&pod).sidecar()).expect("json");
        c["securityContext"]["seccompProfile"]["type"].clone()
    };
    assert_eq!(profile(None), "RuntimeDefault");
    assert_eq!(profile(Some("Unconfined")), "Unconfined");
    assert_eq!(profile(Some("unconfined")), "Unconfined");
    assert_eq!(profile(Some("RuntimeDefault")), "RuntimeDefault");
    for bad in ["Localhost", "strict"] {
        let message = deny(&pod_with(&[("dapr.io/sidecar-seccomp-profile-type", bad)]));
        assert!(
            message.contains("dapr.io/sidecar-seccomp-profile-type"),
            "{message}"
        );
    }
}

#[test]
fn enable_native_sidecar() {
    // No initContainers yet: the list is added with the sidecar in one op.
    let injected = inject(&pod_with(&[("dapr.io/enable-native-sidecar", "true")]));
    assert!(
        injected
            .paths()
            .contains(&"/spec/initContainers".to_string())
    );
    let spec = injected.pod.spec.clone().expect("spec");
    assert_eq!(spec.containers.len(), 1, "not among the app containers");
    let init = spec.init_containers.expect("initContainers");
    assert_eq!(init.len(), 1);
    assert_eq!(init[0].name, "daprd");
    assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
    // App containers still get the ports.
    assert!(
        spec.containers[0]
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "DAPR_HTTP_PORT")
    );

    // Existing initContainers: appended, the others untouched.
    let mut pod = pod_with(&[("dapr.io/enable-native-sidecar", "yes")]);
    pod["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m"}]);
    let injected = inject(&pod);
    assert!(
        injected
            .paths()
            .contains(&"/spec/initContainers/-".to_string())
    );
    let init = injected
        .pod
        .spec
        .clone()
        .expect("spec")
        .init_containers
        .expect("init");
    let names: Vec<_> = init.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["migrate", "daprd"]);
    assert!(init[0].restart_policy.is_none());
}

#[test]
fn max_body_size() {
    let injected = inject(&pod_with(&[("dapr.io/max-body-size", "16Mi")]));
    assert_eq!(injected.arg("--max-body-size").as_deref(), Some("16Mi"));
    for ok in ["512", "4M", "4MB", "500Ki"] {
        let injected = inject(&pod_with(&[("dapr.io/max-body-size", ok)]));
        assert_eq!(injected.arg("--max-body-size").as_deref(), Some(ok));
    }
    let message = deny(&pod_with(&[("dapr.io/max-body-size", "lots")]));
    assert!(message.contains("dapr.io/max-body-size"), "{message}");
}

#[test]
fn http_max_request_size() {
    let injected = inject(&pod_with(&[("dapr.io/http-max-request-size", "8")]));
    assert_eq!(
        injected.arg("--dapr-http-max-request-size").as_deref(),
        Some("8")
    );
    for ignored in ["0", "big", "-2"] {
        let injected = inject(&pod_with(&[("dapr.io/http-max-request-size", ignored)]));
        assert!(
            !injected.has_flag("--dapr-http-max-request-size"),
            "{ignored:?}"
        );
    }
}

#[test]
fn flags_follow_the_base_args_in_a_fixed_order() {
    let injected = inject(&pod_with(&[
        ("dapr.io/http-max-request-size", "8"),
        ("dapr.io/max-body-size", "8Mi"),
        ("dapr.io/config", "cfg"),
        ("dapr.io/graceful-shutdown-seconds", "20"),
        ("dapr.io/sidecar-listen-addresses", "0.0.0.0"),
        ("dapr.io/app-port", "8080"),
        ("dapr.io/log-as-json", "on"),
    ]));
    let args = injected.args();
    assert_eq!(
        &args[16..],
        [
            "--log-as-json",
            "--app-port",
            "8080",
            "--dapr-listen-addresses",
            "0.0.0.0",
            "--dapr-graceful-shutdown-seconds",
            "20",
            "--config",
            "cfg",
            "--max-body-size",
            "8Mi",
            "--dapr-http-max-request-size",
            "8"
        ]
    );
}

#[test]
fn unsupported_annotations_are_reported() {
    let injected = inject(&pod_with(&[
        ("dapr.io/enable-metrics", "false"),
        ("dapr.io/placement-host-address", ""),
        ("dapr.io/volume-mounts", "data:/data"),
        ("dapr.io/unix-domain-socket-path", "/tmp/dapr"),
        ("dapr.io/app-port", "8080"),
        ("dapr.io/log-level", "debug"),
        ("prometheus.io/scrape", "true"),
        ("other.dapr.io/x", "y"),
    ]));
    assert_eq!(
        injected.unsupported,
        [
            "dapr.io/enable-metrics",
            "dapr.io/placement-host-address",
            "dapr.io/unix-domain-socket-path",
            "dapr.io/volume-mounts"
        ]
    );
    assert!(inject(&pod_with(&[])).unsupported.is_empty());
}

#[test]
fn every_supported_annotation_at_once_applies() {
    let mut config = cfg();
    config.image_pull_policy = None;
    let injected = inject_in(
        &pod_with(&[
            ("dapr.io/app-id", "everything"),
            ("dapr.io/app-port", "8080"),
            ("dapr.io/config", "cfg"),
            ("dapr.io/log-level", "warn"),
            ("dapr.io/log-as-json", "true"),
            ("dapr.io/sidecar-image", "img:1"),
            ("dapr.io/sidecar-cpu-request", "100m"),
            ("dapr.io/sidecar-cpu-limit", "500m"),
            ("dapr.io/sidecar-memory-request", "64Mi"),
            ("dapr.io/sidecar-memory-limit", "128Mi"),
            ("dapr.io/api-token-secret", "tok"),
            ("dapr.io/env", "A=1,B=2"),
            ("dapr.io/sidecar-listen-addresses", "[::1],127.0.0.1"),
            ("dapr.io/graceful-shutdown-seconds", "15"),
            ("dapr.io/sidecar-liveness-probe-delay-seconds", "30"),
            ("dapr.io/sidecar-readiness-probe-threshold", "10"),
            ("dapr.io/sidecar-seccomp-profile-type", "Unconfined"),
            ("dapr.io/enable-native-sidecar", "true"),
            ("dapr.io/max-body-size", "8Mi"),
            ("dapr.io/http-max-request-size", "8"),
        ]),
        "shop",
        &config,
    );
    assert!(
        injected.unsupported.is_empty(),
        "{:?}",
        injected.unsupported
    );
    let c = injected.sidecar();
    assert!(c.image_pull_policy.is_none());
    assert_eq!(c.image.as_deref(), Some("img:1"));
    assert_eq!(injected.arg("--log-level").as_deref(), Some("warn"));
}
