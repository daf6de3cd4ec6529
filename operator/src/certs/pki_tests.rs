//! Tests of the X.509 logic in `pki.rs`.

use super::*;
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn names() -> Vec<String> {
    vec![
        "statecar-webhook.ops.svc".into(),
        "statecar-webhook.ops.svc.cluster.local".into(),
        "127.0.0.1".into(),
        "::1".into(),
    ]
}

fn at(secs: u64) -> SystemTime {
    // Whole seconds: certificate times have no fractions.
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

/// Verifies `chain` (leaf first) for `name` with only `bundle_pem` trusted, as a client
/// with that caBundle would.
fn verify(bundle_pem: &str, chain: &[Cert], name: &str, now: SystemTime) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    for c in parse_certs(bundle_pem).map_err(|e| e.to_string())? {
        roots.add(c.der).map_err(|e| e.to_string())?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let ders: Vec<_> = chain.iter().map(|c| c.der.clone()).collect();
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    verifier
        .verify_server_cert(
            &ders[0],
            &ders[1..],
            &ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?,
            &[],
            UnixTime::since_unix_epoch(since_epoch),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn data_of(d: &Data, key: &str) -> String {
    String::from_utf8(d[key].clone()).unwrap()
}

fn issue(now: SystemTime) -> (Data, Material) {
    let empty = Material::read(&Data::new());
    assert_eq!(
        plan(&empty, &normalize_names(&names()), now),
        Plan::Issue("the Secret holds no usable CA")
    );
    let data = apply(
        Plan::Issue("test"),
        &empty,
        &Data::new(),
        &names(),
        90 * DAY,
        3650 * DAY,
        now,
    )
    .unwrap();
    let m = Material::read(&data);
    assert!(m.problems.is_empty(), "{:?}", m.problems);
    (data, m)
}

#[test]
fn issues_a_ca_and_a_leaf_that_verify_for_every_name() {
    let now = at(0);
    let (data, m) = issue(now);
    let ca = m.authority.as_ref().expect("a CA");
    let leaf = m.leaf.as_ref().expect("a leaf");
    assert!(ca.cert.is_ca);
    assert!(!leaf.cert().is_ca);
    assert_eq!(m.bundle.len(), 1);
    assert_eq!(leaf.chain.len(), 1);
    assert_eq!(leaf.cert().issuer, ca.cert.subject);
    assert_eq!(leaf.cert().not_after, now + 90 * DAY);
    assert_eq!(ca.cert.not_after, now + 3650 * DAY);
    assert!(leaf.cert().not_before < now, "backdated for clock skew");
    let bundle = data_of(&data, CA_CRT);
    for name in [
        "statecar-webhook.ops.svc",
        "statecar-webhook.ops.svc.cluster.local",
        "127.0.0.1",
        "::1",
    ] {
        verify(&bundle, &leaf.chain, name, now).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(verify(&bundle, &leaf.chain, "other.ops.svc", now).is_err());
    assert!(verify(&bundle, &leaf.chain, "127.0.0.2", now).is_err());
    assert_eq!(plan(&m, &normalize_names(&names()), now), Plan::Keep);
    // The stored PEM is what we parse back.
    assert_eq!(m.bundle_pem.as_deref(), Some(bundle.as_str()));
    assert!(!bundle.contains('\r'));
}

#[test]
fn dns_names_and_ip_addresses_become_the_right_san_types() {
    let ca = Authority::generate(DAY, at(0)).unwrap();
    let (cert, _) = ca
        .issue_leaf(
            &["Svc.NS.svc.".into(), "10.0.0.1".into(), "fd00::0001".into()],
            DAY,
            at(0),
        )
        .unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(&cert.der).unwrap();
    let san = x.subject_alternative_name().unwrap().unwrap();
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for n in &san.value.general_names {
        match n {
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::IPAddress(b) => ips.push(b.to_vec()),
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    assert_eq!(dns, ["Svc.NS.svc."]);
    assert_eq!(ips.len(), 2);
    assert_eq!(ips[0], [10, 0, 0, 1]);
    assert_eq!(ips[1].len(), 16);
    assert_eq!(
        cert.sans,
        BTreeSet::from(["svc.ns.svc".into(), "10.0.0.1".into(), "fd00::1".into()])
    );
}

#[test]
fn renewal_is_due_when_less_than_a_third_is_left() {
    let nb = at(0);
    let na = at(90);
    assert!(!needs_renewal(nb, na, at(0)));
    assert!(!needs_renewal(nb, na, at(59)));
    assert!(!needs_renewal(nb, na, at(60)), "exactly a third left");
    assert!(needs_renewal(nb, na, at(60) + Duration::from_millis(1)));
    assert!(needs_renewal(nb, na, at(89)));
    assert!(needs_renewal(nb, na, at(90)), "expired");
    assert!(needs_renewal(nb, na, at(1000)));
    // A certificate from a clock ahead of ours is not renewed over and over.
    assert!(!needs_renewal(at(10), at(100), at(0)));
    // 90 days: renewed at day 60.
    let day = |d: u32| UNIX_EPOCH + DAY * d;
    assert!(!needs_renewal(day(0), day(90), day(60)));
    assert!(needs_renewal(
        day(0),
        day(90),
        day(60) + Duration::from_secs(1)
    ));
}

#[test]
fn plan_renews_the_leaf_at_two_thirds_and_keeps_the_ca() {
    let (data, m) = issue(at(0));
    let names = normalize_names(&names());
    // Due at two thirds of the validity, which starts a little before issuance.
    let due = m.leaf.as_ref().unwrap().cert().renewal_due();
    assert_eq!(due, at(60 * 86400 - 100));
    assert_eq!(plan(&m, &names, due - Duration::from_secs(1)), Plan::Keep);
    let later = due + Duration::from_secs(1);
    let p = plan(&m, &names, later);
    assert!(matches!(p, Plan::RenewLeaf(_)), "{p:?}");
    let renewed = apply(p, &m, &data, &self::names(), 90 * DAY, 3650 * DAY, later).unwrap();
    let r = Material::read(&renewed);
    assert_eq!(renewed[CA_CRT], data[CA_CRT], "same CA, same bundle");
    assert_eq!(renewed[CA_KEY], data[CA_KEY]);
    assert_ne!(renewed[TLS_KEY], data[TLS_KEY], "a fresh key");
    let leaf = r.leaf.as_ref().unwrap();
    assert_ne!(leaf.cert().der, m.leaf.as_ref().unwrap().cert().der);
    assert_eq!(leaf.cert().not_after, later + 90 * DAY);
    verify(&data_of(&renewed, CA_CRT), &leaf.chain, "127.0.0.1", later).unwrap();
    assert_eq!(plan(&r, &names, later), Plan::Keep);
}

#[test]
fn a_new_name_renews_the_leaf_and_a_dropped_one_waits() {
    let (data, m) = issue(at(0));
    let mut changed = names();
    changed.push("statecar-webhook.other.svc".into());
    let p = plan(&m, &normalize_names(&changed), at(1));
    assert_eq!(p, Plan::AddNames);
    let renewed = apply(p, &m, &data, &changed, 90 * DAY, 3650 * DAY, at(1)).unwrap();
    let r = Material::read(&renewed);
    let leaf = r.leaf.as_ref().unwrap();
    verify(
        &data_of(&renewed, CA_CRT),
        &leaf.chain,
        "statecar-webhook.other.svc",
        at(1),
    )
    .unwrap();
    assert_eq!(leaf.cert().sans, normalize_names(&changed));
    assert_eq!(plan(&r, &normalize_names(&changed), at(1)), Plan::Keep);
    // A replica still on the old names is content with it: no issuing back and forth.
    assert_eq!(plan(&r, &normalize_names(&names()), at(1)), Plan::Keep);

    // Adding a name keeps the names of the current leaf that are not configured here.
    let other = vec!["statecar-webhook.ops.svc".to_string(), "10.1.2.3".into()];
    let p = plan(&r, &normalize_names(&other), at(2));
    assert_eq!(p, Plan::AddNames);
    let both = apply(p, &r, &renewed, &other, 90 * DAY, 3650 * DAY, at(2)).unwrap();
    let b = Material::read(&both);
    let sans = &b.leaf.as_ref().unwrap().cert().sans;
    assert!(normalize_names(&changed).is_subset(sans));
    assert!(sans.contains("10.1.2.3"));

    // Fewer names is not a reason by itself; the regular renewal issues exactly ours.
    let fewer = names()[..2].to_vec();
    assert_eq!(plan(&m, &normalize_names(&fewer), at(1)), Plan::Keep);
    let later = m.leaf.as_ref().unwrap().cert().renewal_due() + Duration::from_secs(1);
    let p = plan(&m, &normalize_names(&fewer), later);
    let renewed = apply(p, &m, &data, &fewer, 90 * DAY, 3650 * DAY, later).unwrap();
    let leaf = Material::read(&renewed).leaf.unwrap();
    assert_eq!(leaf.cert().sans, normalize_names(&fewer));

    // Order, case, a trailing dot and IP spelling are not changes.
    let same = vec![
        "::0001".into(),
        "127.0.0.1".into(),
        "STATECAR-WEBHOOK.ops.svc.cluster.local.".into(),
        "statecar-webhook.ops.svc".into(),
    ];
    assert_eq!(plan(&m, &normalize_names(&same), at(1)), Plan::Keep);
}

#[test]
fn ca_rotation_keeps_the_old_ca_trusted_until_it_expires() {
    let ca_validity = 3000 * DAY;
    let empty = Material::read(&Data::new());
    let data = apply(
        Plan::Issue("t"),
        &empty,
        &Data::new(),
        &names(),
        90 * DAY,
        ca_validity,
        at(0),
    )
    .unwrap();
    let old_bundle = data_of(&data, CA_CRT);
    let m = Material::read(&data);
    let names_set = normalize_names(&names());

    // Just before a third is left the CA stays (the long-expired leaf is renewed); just
    // after, the CA rotates.
    let due = m.authority.as_ref().unwrap().cert.renewal_due();
    let before = plan(&m, &names_set, due - Duration::from_secs(1));
    assert!(matches!(before, Plan::RenewLeaf(_)), "{before:?}");
    let now = due + Duration::from_secs(1);
    let p = plan(&m, &names_set, now);
    assert!(matches!(p, Plan::RotateCa(_)), "{p:?}");
    let rotated = apply(p, &m, &data, &names(), 90 * DAY, ca_validity, now).unwrap();
    let r = Material::read(&rotated);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let old_ca = m.authority.as_ref().unwrap();
    let new_ca = r.authority.as_ref().unwrap();
    assert_ne!(new_ca.cert.der, old_ca.cert.der);
    assert_ne!(new_ca.cert.subject, old_ca.cert.subject);
    // ca.crt: the new CA first, then the old one.
    assert_eq!(r.bundle.len(), 2);
    assert_eq!(r.bundle[0].der, new_ca.cert.der);
    assert_eq!(r.bundle[1].der, old_ca.cert.der);
    // The new leaf is signed by the new CA, and served with the new CA cross-signed by the
    // old one, valid until the old one expires.
    let leaf = r.leaf.as_ref().unwrap();
    assert_eq!(leaf.cert().issuer, new_ca.cert.subject);
    assert_eq!(leaf.chain.len(), 2);
    let cross = &leaf.chain[1];
    assert_eq!(cross.subject, new_ca.cert.subject);
    assert_eq!(cross.issuer, old_ca.cert.subject);
    assert_eq!(cross.not_after, old_ca.cert.not_after);
    // The old CA allows the one CA (the cross-signed one) between it and the leaf.
    let (_, x) = x509_parser::parse_x509_certificate(&old_ca.cert.der).unwrap();
    let constraints = x.basic_constraints().unwrap().unwrap().value;
    assert!(constraints.ca);
    assert_eq!(constraints.path_len_constraint, Some(1));
    let new_bundle = data_of(&rotated, CA_CRT);
    // Clients with the new bundle, and clients still holding the old one, trust it.
    verify(&new_bundle, &leaf.chain, "statecar-webhook.ops.svc", now).unwrap();
    verify(&old_bundle, &leaf.chain, "statecar-webhook.ops.svc", now).unwrap();
    // Without the cross-signed certificate, the old bundle would not do.
    assert!(
        verify(
            &old_bundle,
            &leaf.chain[..1],
            "statecar-webhook.ops.svc",
            now
        )
        .is_err()
    );
    assert_eq!(plan(&r, &names_set, now), Plan::Keep);

    // A leaf renewed while the old CA lives keeps the cross-signed certificate.
    let later = now + 61 * DAY;
    let p = plan(&r, &names_set, later);
    assert!(matches!(p, Plan::RenewLeaf(_)), "{p:?}");
    let renewed = apply(p, &r, &rotated, &names(), 90 * DAY, ca_validity, later).unwrap();
    let rr = Material::read(&renewed);
    let leaf = rr.leaf.as_ref().unwrap();
    assert_eq!(leaf.chain.len(), 2);
    assert_eq!(leaf.chain[1].der, cross.der);
    verify(&old_bundle, &leaf.chain, "127.0.0.1", later).unwrap();
    assert_eq!(rr.bundle.len(), 2);

    // Once the old CA has expired it leaves the bundle, and the chain is renewed without
    // the (expired) cross-signed certificate.
    let after = old_ca.cert.not_after + Duration::from_secs(1);
    let p = plan(&rr, &names_set, after);
    assert!(matches!(p, Plan::RenewLeaf(_)), "{p:?}");
    let pruned = apply(p, &rr, &renewed, &names(), 90 * DAY, ca_validity, after).unwrap();
    let pr = Material::read(&pruned);
    assert_eq!(pr.bundle.len(), 1);
    assert_eq!(pr.bundle[0].der, new_ca.cert.der);
    assert_eq!(pr.leaf.as_ref().unwrap().chain.len(), 1);
    assert_eq!(plan(&pr, &names_set, after), Plan::Keep);
}

#[test]
fn expired_cas_are_dropped_from_the_bundle() {
    let (data, m) = issue(at(0));
    let stale = Authority::generate(Duration::from_secs(10), at(0)).unwrap();
    let mut with_stale = data.clone();
    let mut bundle = data[CA_CRT].clone();
    bundle.extend_from_slice(stale.cert.pem.as_bytes());
    with_stale.insert(CA_CRT.into(), bundle);
    let ms = Material::read(&with_stale);
    let names_set = normalize_names(&names());
    assert_eq!(plan(&ms, &names_set, at(5)), Plan::Keep, "not expired yet");
    assert_eq!(plan(&ms, &names_set, at(10)), Plan::Rebundle);
    let fixed = apply(Plan::Rebundle, &ms, &with_stale, &names(), DAY, DAY, at(10)).unwrap();
    assert_eq!(fixed[CA_CRT], data[CA_CRT]);
    assert_eq!(fixed[TLS_CRT], data[TLS_CRT], "the leaf is left alone");
    assert_eq!(
        plan(&Material::read(&fixed), &names_set, at(10)),
        Plan::Keep
    );
    assert_eq!(m.bundle.len(), 1);
}

#[test]
fn a_secret_without_our_ca_key_is_served_as_it_is() {
    let (mut data, _) = issue(at(0));
    data.remove(CA_KEY);
    let m = Material::read(&data);
    assert!(!m.managed);
    assert!(m.leaf.is_some());
    assert_eq!(
        plan(&m, &normalize_names(&names()), at(100 * 86400)),
        Plan::External
    );
}

#[test]
fn unusable_content_is_replaced() {
    let names_set = normalize_names(&names());
    // A pre-created empty Secret is ours to fill.
    let m = Material::read(&Data::from([("other".into(), b"x".to_vec())]));
    assert!(m.managed);
    assert!(matches!(plan(&m, &names_set, at(0)), Plan::Issue(_)));

    let (data, _) = issue(at(0));
    let mut bad_leaf = data.clone();
    bad_leaf.insert(TLS_CRT.into(), b"garbage".to_vec());
    let m = Material::read(&bad_leaf);
    assert!(m.leaf.is_none());
    assert!(matches!(plan(&m, &names_set, at(0)), Plan::RenewLeaf(_)));

    // A key that does not belong to the certificate is refused.
    let (other, _) = issue(at(0));
    let mut mismatched = data.clone();
    mismatched.insert(TLS_KEY.into(), other[TLS_KEY].clone());
    let m = Material::read(&mismatched);
    assert!(m.leaf.is_none(), "{:?}", m.problems);
    assert!(!m.problems.is_empty());

    let mut bad_ca = data.clone();
    bad_ca.insert(CA_KEY.into(), other[CA_KEY].clone());
    bad_ca.insert("other".into(), b"x".to_vec());
    let m = Material::read(&bad_ca);
    assert!(m.authority.is_none());
    assert!(matches!(plan(&m, &names_set, at(0)), Plan::Issue(_)));
    // The other keys survive a rewrite.
    let out = apply(
        Plan::Issue("t"),
        &m,
        &bad_ca,
        &names(),
        DAY,
        10 * DAY,
        at(0),
    )
    .unwrap();
    assert_eq!(out["other"], b"x".to_vec().as_slice());
}

#[test]
fn the_leaf_never_outlives_its_ca() {
    let ca = Authority::generate(Duration::from_secs(100), at(0)).unwrap();
    let (leaf, _) = ca.issue_leaf(&names(), 90 * DAY, at(10)).unwrap();
    assert_eq!(leaf.not_after, ca.cert.not_after);
}

#[test]
fn validity_is_not_shortened_by_whole_second_times() {
    let ca = Authority::generate(DAY, at(0)).unwrap();
    let half = Duration::from_millis(500);
    let (leaf, _) = ca
        .issue_leaf(&names(), Duration::from_secs(6), at(10) + half)
        .unwrap();
    assert_eq!(leaf.not_after, at(17), "rounded up, not down to 16");
    assert!(leaf.not_before <= at(10));
}
