//! The webhook serving certificate against a real API server: two replicas sharing one CA through
//! the Secret, the caBundle of webhook configurations kept current, and rotations (of the leaf,
//! and of the CA) picked up by every replica while the caBundle keeps verifying what is served.
//!
//! Certificates are checked with the `openssl` command line, a verifier independent of the one
//! the operator is built with.

use std::future::Future;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use statecar_operator::certs::{self, CertSettings, CertStore};
use statecar_tests::cluster::{Namespace, cluster};
use statecar_tests::unique;

const SECRET: &str = "statecar-webhook-tls";

fn settings(ns: &str, leaf: Duration, ca: Duration, mwc: &[&str], vwc: &[&str]) -> CertSettings {
    CertSettings {
        namespace: ns.to_string(),
        secret_name: SECRET.to_string(),
        dns_names: vec![
            format!("statecar-webhook.{ns}.svc"),
            format!("statecar-webhook.{ns}.svc.cluster.local"),
            "127.0.0.1".to_string(),
        ],
        leaf_validity: leaf,
        ca_validity: ca,
        mutating_webhooks: mwc.iter().map(|s| s.to_string()).collect(),
        validating_webhooks: vwc.iter().map(|s| s.to_string()).collect(),
        check_every: Duration::from_millis(500),
    }
}

/// The served chain, leaf first, as DER.
fn chain(store: &CertStore) -> Option<Vec<Vec<u8>>> {
    store
        .current()
        .map(|k| k.cert.iter().map(|c| c.to_vec()).collect())
}

fn leaf(store: &CertStore) -> Option<Vec<u8>> {
    chain(store).map(|mut c| c.swap_remove(0))
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn secret_bundle(client: &Client, ns: &str) -> String {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(SECRET)
        .await
        .expect("the Secret exists");
    let data = secret.data.unwrap_or_default();
    String::from_utf8(data["ca.crt"].0.clone()).expect("ca.crt is text")
}

fn count_certs(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

/// The caBundle of every webhook of both configurations (`None` where unset or when a
/// configuration is missing).
async fn ca_bundles(client: &Client, mwc: &str, vwc: &str) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::new();
    match Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get_opt(mwc)
        .await
        .expect("reading the MutatingWebhookConfiguration")
    {
        Some(c) => out.extend(
            c.webhooks
                .unwrap_or_default()
                .into_iter()
                .map(|w| w.client_config.ca_bundle.map(|b| b.0)),
        ),
        None => out.push(None),
    }
    match Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get_opt(vwc)
        .await
        .expect("reading the ValidatingWebhookConfiguration")
    {
        Some(c) => out.extend(
            c.webhooks
                .unwrap_or_default()
                .into_iter()
                .map(|w| w.client_config.ca_bundle.map(|b| b.0)),
        ),
        None => out.push(None),
    }
    out
}

fn webhook(name: &str, tag: &str, ca_bundle: Option<&str>) -> serde_json::Value {
    let mut client_config = json!({"url": "https://127.0.0.1:1/x"});
    if let Some(b) = ca_bundle {
        client_config["caBundle"] = json!(b);
    }
    json!({
        "name": name,
        "clientConfig": client_config,
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "failurePolicy": "Ignore",
        "timeoutSeconds": 1,
        // Matches no namespace: no label carries this value.
        "namespaceSelector": {"matchLabels": {"statecar-tests/never": tag}},
        "rules": [{
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["configmaps"],
        }],
    })
}

/// Deletes the webhook configurations when the test ends, however it ends.
struct Configs {
    mutating: String,
    validating: String,
}

impl Drop for Configs {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&cluster().kubeconfig)
            .args([
                "delete",
                &format!("mutatingwebhookconfiguration/{}", self.mutating),
                &format!("validatingwebhookconfiguration/{}", self.validating),
                "--ignore-not-found",
                "--wait=false",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

async fn create_configs(client: &Client) -> Configs {
    let configs = Configs {
        mutating: unique("sc-certs-mutating"),
        validating: unique("sc-certs-validating"),
    };
    let mwc: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": configs.mutating},
        "webhooks": [
            webhook("first.certs.statecar.io", &configs.mutating, None),
            // A stale bundle is replaced too.
            webhook("second.certs.statecar.io", &configs.mutating, Some("c3RhbGU=")),
        ],
    }))
    .unwrap();
    let vwc: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": configs.validating},
        "webhooks": [webhook("only.certs.statecar.io", &configs.validating, None)],
    }))
    .unwrap();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &mwc)
        .await
        .expect("creating the MutatingWebhookConfiguration");
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &vwc)
        .await
        .expect("creating the ValidatingWebhookConfiguration");
    configs
}

fn openssl(args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn to_pem(dir: &Path, name: &str, der: &[u8]) -> Result<String, String> {
    let der_path = dir.join(format!("{name}.der"));
    let pem_path = dir.join(format!("{name}.pem"));
    std::fs::write(&der_path, der).map_err(|e| e.to_string())?;
    openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        der_path.to_str().unwrap(),
        "-out",
        pem_path.to_str().unwrap(),
    ])?;
    std::fs::read_to_string(&pem_path).map_err(|e| e.to_string())
}

/// Verifies `chain` (leaf first, DER) as a TLS server certificate with only `bundle_pem`
/// trusted, for the service name in `ns` and for 127.0.0.1.
fn verify(bundle_pem: &[u8], chain: &[Vec<u8>], ns: &str) -> Result<(), String> {
    verify_for(bundle_pem, chain, &format!("statecar-webhook.{ns}.svc"))
}

/// [`verify`] for host name `host`.
fn verify_for(bundle_pem: &[u8], chain: &[Vec<u8>], host: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    std::fs::write(path("bundle.pem"), bundle_pem).map_err(|e| e.to_string())?;
    to_pem(dir.path(), "leaf", &chain[0])?;
    let mut intermediates = String::new();
    for (i, der) in chain[1..].iter().enumerate() {
        intermediates.push_str(&to_pem(dir.path(), &format!("chain{i}"), der)?);
    }
    std::fs::write(path("intermediates.pem"), intermediates).map_err(|e| e.to_string())?;
    for (flag, name) in [("-verify_hostname", host), ("-verify_ip", "127.0.0.1")] {
        let (bundle, untrusted, leaf) = (
            path("bundle.pem"),
            path("intermediates.pem"),
            path("leaf.pem"),
        );
        let mut args = vec![
            "verify",
            "-x509_strict",
            "-purpose",
            "sslserver",
            flag,
            name,
        ];
        args.extend(["-CAfile", bundle.as_str()]);
        if chain.len() > 1 {
            args.extend(["-untrusted", untrusted.as_str()]);
        }
        args.push(leaf.as_str());
        openssl(&args)?;
    }
    Ok(())
}

fn remaining(not_after: SystemTime) -> f64 {
    match not_after.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_ca_keep_ca_bundles_current_and_rotate_the_leaf() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = Namespace::create(&client, "certs").await;
    let configs = create_configs(&client).await;
    let s = settings(
        &ns.name,
        Duration::from_secs(6),
        Duration::from_secs(3600),
        &[&configs.mutating],
        &[&configs.validating],
    );

    // Two replicas start at once against a namespace without the Secret.
    let (a, b) = (certs::new_store(), certs::new_store());
    let started = Instant::now();
    let ra = tokio::spawn(certs::run(client.clone(), s.clone(), a.clone()));
    let rb = tokio::spawn(certs::run(client.clone(), s.clone(), b.clone()));
    let first = wait_for(
        "both replicas to serve the same leaf",
        Duration::from_secs(20),
        || async {
            match (leaf(&a), leaf(&b)) {
                (Some(x), Some(y)) if x == y => Some(x),
                _ => None,
            }
        },
    )
    .await;
    eprintln!("both replicas serve one leaf after {:?}", started.elapsed());
    let bundle = secret_bundle(&client, &ns.name).await;
    assert_eq!(count_certs(&bundle), 1, "exactly one CA:\n{bundle}");
    assert_eq!(a.ca_bundle_pem().as_deref(), Some(bundle.as_str()));
    assert_eq!(b.ca_bundle_pem().as_deref(), Some(bundle.as_str()));
    let secret = Api::<Secret>::namespaced(client.clone(), &ns.name)
        .get(SECRET)
        .await
        .unwrap();
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let keys: Vec<&str> = secret
        .data
        .as_ref()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["ca.crt", "ca.key", "tls.crt", "tls.key"]);

    // Every webhook of both configurations gets the bundle; the stale one is replaced.
    let want = Some(bundle.clone().into_bytes());
    let since = Instant::now();
    wait_for(
        "the caBundles to be set",
        Duration::from_secs(10),
        || async {
            let got = ca_bundles(&client, &configs.mutating, &configs.validating).await;
            (got.len() == 3 && got.iter().all(|b| *b == want)).then_some(())
        },
    )
    .await;
    eprintln!(
        "caBundles set {:?} after the configurations appeared",
        since.elapsed()
    );
    verify(bundle.as_bytes(), &chain(&a).unwrap(), &ns.name).unwrap();

    // The leaf rotates (6 s validity: when less than 2 s are left), and both replicas serve
    // the new one. Two rotations, to see the period.
    let mut previous = first;
    let mut not_after = a.not_after().unwrap();
    let mut rotated_at = Vec::new();
    for round in 1..=2 {
        let next = wait_for("the leaf to rotate", Duration::from_secs(15), || async {
            leaf(&a).filter(|l| *l != previous)
        })
        .await;
        let left = remaining(not_after);
        let seen_by_a = Instant::now();
        rotated_at.push(seen_by_a);
        wait_for(
            "the other replica to serve the new leaf",
            Duration::from_secs(5),
            || async { (leaf(&b).as_ref() == Some(&next)).then_some(()) },
        )
        .await;
        let lag = seen_by_a.elapsed();
        // Both replicas find the renewal due at the same moment; one writes, the other gets a
        // Conflict and serves what won.
        eprintln!(
            "rotation {round}: the old leaf had {left:.2} s of its 6 s left; both replicas \
             served the new one within {lag:?} of each other"
        );
        // Certificate times are whole seconds, so the 6 s leaf really spans 6 to 8 s, and a
        // third of that is 2 to 2.7 s.
        assert!(left > 1.5, "renewed late: {left:.2} s left");
        assert!(left < 2.8, "renewed early: {left:.2} s left");
        assert!(lag < Duration::from_secs(3), "slow pickup: {lag:?}");
        // Same CA: the bundle, and every caBundle, stay as they were and verify the new leaf.
        assert_eq!(secret_bundle(&client, &ns.name).await, bundle);
        assert_eq!(a.ca_bundle_pem().as_deref(), Some(bundle.as_str()));
        let got = ca_bundles(&client, &configs.mutating, &configs.validating).await;
        assert!(got.iter().all(|b| *b == want));
        let served = chain(&b).unwrap();
        assert_eq!(served[0], next);
        verify(got[0].as_deref().unwrap(), &served, &ns.name).unwrap();
        previous = next;
        not_after = a.not_after().unwrap();
    }
    eprintln!(
        "time between rotations: {:?} (two thirds of a leaf that spans 6 to 8 s in whole seconds)",
        rotated_at[1] - rotated_at[0]
    );

    ra.abort();
    rb.abort();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(&configs.mutating, &DeleteParams::default())
        .await
        .expect("deleting the MutatingWebhookConfiguration");
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .delete(&configs.validating, &DeleteParams::default())
        .await
        .expect("deleting the ValidatingWebhookConfiguration");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_ca_is_trusted_next_to_the_old_one_until_it_expires() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = Namespace::create(&client, "certs-ca").await;
    let configs = create_configs(&client).await;
    // A 9 s CA rotates when less than 3 s are left.
    let s = settings(
        &ns.name,
        Duration::from_secs(6),
        Duration::from_secs(9),
        &[&configs.mutating],
        &[&configs.validating],
    );
    let store = certs::new_store();
    let task = tokio::spawn(certs::run(client.clone(), s, store.clone()));
    let old_bundle = wait_for("a first certificate", Duration::from_secs(20), || async {
        store.ca_bundle_pem()
    })
    .await;
    assert_eq!(count_certs(&old_bundle), 1);

    // The CA rotates: ca.crt holds the new CA and the old one, and the served chain carries
    // the new CA cross-signed by the old one, so clients holding only the old bundle still
    // trust it.
    let both = wait_for("the CA to rotate", Duration::from_secs(15), || async {
        store.ca_bundle_pem().filter(|b| count_certs(b) == 2)
    })
    .await;
    let served = chain(&store).unwrap();
    assert_eq!(served.len(), 2, "leaf and cross-signed CA");
    verify(old_bundle.as_bytes(), &served, &ns.name).unwrap();
    verify(both.as_bytes(), &served, &ns.name).unwrap();
    assert!(
        verify(old_bundle.as_bytes(), &served[..1], &ns.name).is_err(),
        "the new leaf alone is not trusted by the old bundle"
    );
    let want = Some(both.clone().into_bytes());
    wait_for(
        "the caBundles to hold both CAs",
        Duration::from_secs(5),
        || async {
            let got = ca_bundles(&client, &configs.mutating, &configs.validating).await;
            got.iter().all(|b| *b == want).then_some(())
        },
    )
    .await;

    // Once the old CA expires it leaves the bundle, and the chain is the leaf alone.
    let last = wait_for(
        "the expired CA to be dropped",
        Duration::from_secs(15),
        || async { store.ca_bundle_pem().filter(|b| count_certs(b) == 1) },
    )
    .await;
    assert!(both.starts_with(&last), "the new CA stays");
    let served = chain(&store).unwrap();
    assert_eq!(served.len(), 1);
    verify(last.as_bytes(), &served, &ns.name).unwrap();
    let want = Some(last.into_bytes());
    wait_for(
        "the caBundles to drop the old CA",
        Duration::from_secs(5),
        || async {
            let got = ca_bundles(&client, &configs.mutating, &configs.validating).await;
            got.iter().all(|b| *b == want).then_some(())
        },
    )
    .await;

    task.abort();
    drop(configs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_written_by_one_replica_reaches_the_other_through_the_watch() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = Namespace::create(&client, "certs-watch").await;
    let hour = Duration::from_secs(3600);
    let a_settings = settings(&ns.name, hour, 10 * hour, &[], &[]);
    // B checks once a minute and nothing falls due for an hour: only the watch brings it news.
    let b_settings = CertSettings {
        check_every: Duration::from_secs(60),
        ..a_settings.clone()
    };
    let (a, b) = (certs::new_store(), certs::new_store());
    let ra = tokio::spawn(certs::run(client.clone(), a_settings.clone(), a.clone()));
    let rb = tokio::spawn(certs::run(client.clone(), b_settings, b.clone()));
    let first = wait_for(
        "both replicas to serve the same leaf",
        Duration::from_secs(20),
        || async {
            match (leaf(&a), leaf(&b)) {
                (Some(x), Some(y)) if x == y => Some(x),
                _ => None,
            }
        },
    )
    .await;

    // A comes back with one more name (a rollout changing the settings): it issues at once.
    ra.abort();
    let _ = ra.await;
    let added = format!("statecar-webhook-next.{}.svc", ns.name);
    let mut more = a_settings.clone();
    more.dns_names.push(added.clone());
    let a = certs::new_store();
    let restarted = Instant::now();
    let ra = tokio::spawn(certs::run(client.clone(), more, a.clone()));
    // When each replica first serves the new leaf, from the restart.
    let (mut at_a, mut at_b) = (None, None);
    let next = wait_for(
        "both replicas to serve a leaf for the new name",
        Duration::from_secs(10),
        || {
            let (a_leaf, b_leaf) = (
                leaf(&a).filter(|l| *l != first),
                leaf(&b).filter(|l| *l != first),
            );
            if a_leaf.is_some() && at_a.is_none() {
                at_a = Some(restarted.elapsed());
            }
            if b_leaf.is_some() && at_b.is_none() {
                at_b = Some(restarted.elapsed());
            }
            async move { a_leaf.filter(|l| Some(l) == b_leaf.as_ref()) }
        },
    )
    .await;
    let (at_a, at_b) = (at_a.unwrap(), at_b.unwrap());
    eprintln!(
        "after the restart, the restarted replica served the new leaf at {at_a:?} and the other \
         one (checking once a minute) at {at_b:?}"
    );
    assert!(
        at_b < Duration::from_secs(3),
        "not through the watch: {at_b:?}"
    );
    let bundle = b.ca_bundle_pem().unwrap();
    let served = chain(&b).unwrap();
    verify_for(bundle.as_bytes(), &served, &added).unwrap();
    verify(bundle.as_bytes(), &served, &ns.name).unwrap();

    // B, still on the old names, finds them all in the new leaf and leaves the Secret alone.
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    let version = secrets.get(SECRET).await.unwrap().metadata.resource_version;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        secrets.get(SECRET).await.unwrap().metadata.resource_version,
        version
    );
    assert_eq!(leaf(&a), Some(next.clone()));
    assert_eq!(leaf(&b), Some(next));

    ra.abort();
    rb.abort();
}
