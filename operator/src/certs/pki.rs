//! The X.509 side of the webhook certificates, without any I/O: issuing CAs and serving
//! certificates (rcgen, ECDSA P-256), reading them back (x509-parser), and deciding from the
//! certificates themselves what needs renewing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

use super::Error;

/// Keys of the Secret (`kubernetes.io/tls` plus the CA).
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_CRT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";

/// A Secret's data, bytes as stored.
pub(crate) type Data = BTreeMap<String, Vec<u8>>;

const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const PEM_END: &str = "-----END CERTIFICATE-----";

/// What we need to know about one certificate.
#[derive(Clone, Debug)]
pub(crate) struct Cert {
    /// One PEM block with `\n` line endings.
    pub pem: String,
    pub der: CertificateDer<'static>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub subject: Vec<u8>,
    pub issuer: Vec<u8>,
    /// The subject public key bits, to match a key or find the same CA cross-signed.
    pub key_bits: Vec<u8>,
    /// DNS and IP SANs, normalised by [`normalize_name`].
    pub sans: BTreeSet<String>,
    pub serial: String,
    pub is_ca: bool,
}

impl Cert {
    fn from_pem(block: &str) -> Result<Cert, Error> {
        let der = CertificateDer::from_pem_slice(block.as_bytes())
            .map_err(|e| Error::Invalid(format!("PEM certificate: {e}")))?;
        let (_, x) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| Error::Invalid(format!("X.509 certificate: {e}")))?;
        let mut sans = BTreeSet::new();
        let san = x
            .subject_alternative_name()
            .map_err(|e| Error::Invalid(format!("subjectAltName: {e}")))?;
        for name in san.iter().flat_map(|ext| &ext.value.general_names) {
            match name {
                GeneralName::DNSName(d) => {
                    sans.insert(normalize_name(d));
                }
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b)
                            .ok()
                            .map(|o| IpAddr::from(Ipv4Addr::from(o))),
                        16 => <[u8; 16]>::try_from(*b)
                            .ok()
                            .map(|o| IpAddr::from(Ipv6Addr::from(o))),
                        _ => None,
                    };
                    sans.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
        let pem = block
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
        Ok(Cert {
            not_before: from_unix(x.validity().not_before.timestamp()),
            not_after: from_unix(x.validity().not_after.timestamp()),
            subject: x.subject().as_raw().to_vec(),
            issuer: x.issuer().as_raw().to_vec(),
            key_bits: x.public_key().subject_public_key.data.to_vec(),
            serial: x.raw_serial_as_string(),
            is_ca: x.is_ca(),
            sans,
            pem,
            der: der.clone(),
        })
    }

    fn from_rcgen(cert: &rcgen::Certificate) -> Result<Cert, Error> {
        Cert::from_pem(&cert.pem())
    }

    pub fn expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }

    pub fn needs_renewal(&self, now: SystemTime) -> bool {
        needs_renewal(self.not_before, self.not_after, now)
    }

    /// When [`Cert::needs_renewal`] turns true.
    pub fn renewal_due(&self) -> SystemTime {
        let total = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_after - total / 3
    }
}

fn from_unix(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0).unsigned_abs())
}

/// True once less than a third of the validity is left (so a 90-day certificate is renewed at
/// day 60), or when it has expired.
pub(crate) fn needs_renewal(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
) -> bool {
    let total = not_after.duration_since(not_before).unwrap_or_default();
    match not_after.duration_since(now) {
        Ok(left) => left.is_zero() || left.saturating_mul(3) < total,
        Err(_) => true,
    }
}

/// A SAN as we compare it: IP addresses in canonical form, DNS names lower case without a
/// trailing dot.
pub(crate) fn normalize_name(name: &str) -> String {
    let name = name.trim();
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => name.trim_end_matches('.').to_ascii_lowercase(),
    }
}

pub(crate) fn normalize_names(names: &[String]) -> BTreeSet<String> {
    names.iter().map(|n| normalize_name(n)).collect()
}

/// Every CERTIFICATE block of a PEM text, in order. Anything between blocks is ignored.
pub(crate) fn parse_certs(text: &str) -> Result<Vec<Cert>, Error> {
    let mut certs = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(PEM_BEGIN) {
        let block = &rest[start..];
        let end = block
            .find(PEM_END)
            .ok_or_else(|| Error::Invalid("a PEM certificate has no END line".into()))?
            + PEM_END.len();
        certs.push(Cert::from_pem(&block[..end])?);
        rest = &block[end..];
    }
    Ok(certs)
}

fn concat_pem<'a>(certs: impl IntoIterator<Item = &'a Cert>) -> String {
    certs.into_iter().map(|c| c.pem.as_str()).collect()
}

/// A random positive serial number, 16 bytes.
fn random_serial() -> Result<Vec<u8>, Error> {
    let mut serial = vec![0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut serial)
        .map_err(|_| Error::Invalid("no randomness for a serial number".into()))?;
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    Ok(serial)
}

/// Certificate times are whole seconds; rounding `notAfter` up keeps the full validity.
fn whole_seconds_up(t: SystemTime) -> SystemTime {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    if since.subsec_nanos() == 0 {
        t
    } else {
        UNIX_EPOCH + Duration::from_secs(since.as_secs() + 1)
    }
}

/// How far back `notBefore` is set, for clocks of API servers a little behind ours.
fn backdate(validity: Duration) -> Duration {
    (validity / 20).min(Duration::from_secs(300))
}

fn new_key() -> Result<KeyPair, Error> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

/// A CA we can sign with: its certificate and its key.
#[derive(Clone)]
pub(crate) struct Authority {
    pub cert: Cert,
    key_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("serial", &self.cert.serial)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// The CA in `bundle` whose public key is `key_pem`'s.
    fn find(bundle: &[Cert], key_pem: &str) -> Result<Authority, Error> {
        let key =
            KeyPair::from_pem(key_pem).map_err(|e| Error::Invalid(format!("{CA_KEY}: {e}")))?;
        let cert = bundle
            .iter()
            .find(|c| c.is_ca && c.key_bits == key.der_bytes())
            .ok_or_else(|| Error::Invalid(format!("no CA in {CA_CRT} matches {CA_KEY}")))?;
        Ok(Authority {
            cert: cert.clone(),
            key_pem: key_pem.to_string(),
        })
    }

    fn key(&self) -> Result<KeyPair, Error> {
        KeyPair::from_pem(&self.key_pem).map_err(|e| Error::Invalid(format!("{CA_KEY}: {e}")))
    }

    fn params(validity: Duration, now: SystemTime) -> Result<CertificateParams, Error> {
        let serial = random_serial()?;
        let tag: String = serial[..4].iter().map(|b| format!("{b:02x}")).collect();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "statecar");
        // A distinct name per CA: during a rotation two of them are trusted side by side.
        dn.push(DnType::CommonName, format!("statecar webhook CA {tag}"));
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        // One CA below: the successor's cross-signed certificate sits between this CA and the
        // leaves the successor signs (strict verifiers, Go's among them, enforce this).
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = (now - backdate(validity)).into();
        params.not_after = whole_seconds_up(now + validity).into();
        Ok(params)
    }

    /// A new self-signed CA.
    pub fn generate(validity: Duration, now: SystemTime) -> Result<Authority, Error> {
        Ok(Self::generate_with(validity, now, None)?.0)
    }

    /// The CA that replaces this one, and (while this one is valid) the new CA's certificate
    /// signed by this one. Served after the leaf, that cross-signed certificate lets a client
    /// that trusts only this CA still trust leaves the new one signs.
    pub fn successor(
        &self,
        validity: Duration,
        now: SystemTime,
    ) -> Result<(Authority, Option<Cert>), Error> {
        Self::generate_with(validity, now, Some(self))
    }

    fn generate_with(
        validity: Duration,
        now: SystemTime,
        predecessor: Option<&Authority>,
    ) -> Result<(Authority, Option<Cert>), Error> {
        let key = new_key()?;
        let params = Self::params(validity, now)?;
        let cert = Cert::from_rcgen(&params.self_signed(&key)?)?;
        let cross = match predecessor {
            Some(old) if !old.cert.expired(now) => {
                let old_key = old.key()?;
                let issuer = Issuer::from_ca_cert_der(&old.cert.der, &old_key)?;
                let mut cross = params.clone();
                cross.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
                cross.not_after = params.not_after.min(old.cert.not_after.into());
                cross.use_authority_key_identifier_extension = true;
                Some(Cert::from_rcgen(&cross.signed_by(&key, &issuer)?)?)
            }
            _ => None,
        };
        let authority = Authority {
            cert,
            key_pem: key.serialize_pem(),
        };
        Ok((authority, cross))
    }

    /// A serving certificate for `names` (IP addresses become IP SANs), and its key in PEM. It
    /// never outlives this CA.
    pub fn issue_leaf(
        &self,
        names: &[String],
        validity: Duration,
        now: SystemTime,
    ) -> Result<(Cert, String), Error> {
        let names: Vec<String> = names.iter().map(|n| n.trim().to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "statecar-webhook");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        params.not_before = (now - backdate(validity)).into();
        params.not_after = whole_seconds_up(now + validity)
            .min(self.cert.not_after)
            .into();
        let key = new_key()?;
        let ca_key = self.key()?;
        let issuer = Issuer::from_ca_cert_der(&self.cert.der, &ca_key)?;
        let cert = Cert::from_rcgen(&params.signed_by(&key, &issuer)?)?;
        Ok((cert, key.serialize_pem()))
    }
}

/// A serving certificate chain (leaf first) with its key, ready for rustls.
#[derive(Clone, Debug)]
pub(crate) struct Leaf {
    pub chain: Vec<Cert>,
    pub certified: Arc<CertifiedKey>,
}

impl Leaf {
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Leaf, Error> {
        let chain = parse_certs(chain_pem)?;
        if chain.is_empty() {
            return Err(Error::Invalid("no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| Error::Invalid(format!("private key: {e}")))?;
        let ders = chain.iter().map(|c| c.der.clone()).collect();
        // Refuses a key that does not match the certificate.
        let certified =
            CertifiedKey::from_der(ders, key, &rustls::crypto::ring::default_provider())?;
        Ok(Leaf {
            chain,
            certified: Arc::new(certified),
        })
    }

    pub fn cert(&self) -> &Cert {
        &self.chain[0]
    }
}

/// What a Secret holds, read leniently: whatever is unusable is `None` and explained in
/// `problems`.
#[derive(Debug)]
pub(crate) struct Material {
    /// We may (re)write the Secret: it holds our CA key, or no serving certificate at all.
    /// Without `ca.key` a certificate was put there by someone else (cert-manager, say), and
    /// is served as it is.
    pub managed: bool,
    pub authority: Option<Authority>,
    /// `ca.crt` as stored: this is the caBundle.
    pub bundle_pem: Option<String>,
    pub bundle: Vec<Cert>,
    pub leaf: Option<Leaf>,
    pub problems: Vec<String>,
}

impl Material {
    pub fn read(data: &Data) -> Material {
        let text = |key: &str| {
            data.get(key)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .filter(|s| !s.trim().is_empty())
        };
        let mut problems = Vec::new();
        let bundle_pem = text(CA_CRT);
        let bundle = match bundle_pem.as_deref().map(parse_certs) {
            Some(Ok(certs)) => certs,
            Some(Err(e)) => {
                problems.push(format!("{CA_CRT}: {e}"));
                Vec::new()
            }
            None => Vec::new(),
        };
        let authority = match text(CA_KEY).map(|key| Authority::find(&bundle, &key)) {
            Some(Ok(a)) => Some(a),
            Some(Err(e)) => {
                problems.push(e.to_string());
                None
            }
            None => None,
        };
        let leaf = match (text(TLS_CRT), text(TLS_KEY)) {
            (Some(chain), Some(key)) => match Leaf::from_pem(&chain, &key) {
                Ok(leaf) => Some(leaf),
                Err(e) => {
                    problems.push(format!("{TLS_CRT}/{TLS_KEY}: {e}"));
                    None
                }
            },
            (Some(_), None) => {
                problems.push(format!("{TLS_CRT} without {TLS_KEY}"));
                None
            }
            _ => None,
        };
        Material {
            managed: data.contains_key(CA_KEY) || text(TLS_CRT).is_none(),
            authority,
            bundle_pem,
            bundle,
            leaf,
            problems,
        }
    }

    /// The earliest moment a decision of [`plan`] can change by time alone.
    pub fn next_due(&self) -> Option<SystemTime> {
        let mut due: Vec<SystemTime> = Vec::new();
        if let Some(a) = &self.authority {
            due.push(a.cert.renewal_due());
        }
        if let Some(leaf) = &self.leaf {
            due.push(leaf.cert().renewal_due());
            due.extend(leaf.chain.iter().map(|c| c.not_after));
        }
        due.extend(self.bundle.iter().map(|c| c.not_after));
        due.into_iter().min()
    }
}

/// What to do with a Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    Keep,
    /// Not ours: serve it as it is.
    External,
    /// A new CA and serving certificate.
    Issue(&'static str),
    /// A new CA (trusted next to the current one) and a serving certificate it signs.
    RotateCa(&'static str),
    RenewLeaf(&'static str),
    /// A new leaf for the configured names plus those of the current leaf. Replicas on older
    /// settings (during a rollout) then still find all their names, instead of issuing back.
    AddNames,
    /// Rewrite `ca.crt`: drop expired CAs, make sure the current one is there.
    Rebundle,
}

pub(crate) fn plan(m: &Material, names: &BTreeSet<String>, now: SystemTime) -> Plan {
    if !m.managed {
        return Plan::External;
    }
    let Some(ca) = &m.authority else {
        return Plan::Issue("the Secret holds no usable CA");
    };
    if ca.cert.expired(now) {
        return Plan::Issue("the CA has expired");
    }
    if ca.cert.needs_renewal(now) {
        return Plan::RotateCa("less than a third of the CA's validity is left");
    }
    let Some(leaf) = &m.leaf else {
        return Plan::RenewLeaf("the Secret holds no usable serving certificate");
    };
    let cert = leaf.cert();
    if cert.issuer != ca.cert.subject {
        return Plan::RenewLeaf("the serving certificate is not signed by the current CA");
    }
    if cert.needs_renewal(now) {
        return Plan::RenewLeaf("less than a third of the serving certificate's validity is left");
    }
    if leaf.chain.iter().any(|c| c.expired(now)) {
        return Plan::RenewLeaf("a certificate in the served chain has expired");
    }
    // A name too many is harmless, and goes at the next renewal.
    if !names.is_subset(&cert.sans) {
        return Plan::AddNames;
    }
    let ders = |certs: &[Cert]| certs.iter().map(|c| c.der.clone()).collect::<Vec<_>>();
    if ders(&bundle_with(&ca.cert, &m.bundle, now)) != ders(&m.bundle) {
        return Plan::Rebundle;
    }
    Plan::Keep
}

/// A CA bundle: `current` first, then the other CAs of `old` that have not expired.
pub(crate) fn bundle_with(current: &Cert, old: &[Cert], now: SystemTime) -> Vec<Cert> {
    let mut bundle = vec![current.clone()];
    for c in old {
        if !c.expired(now) && !bundle.iter().any(|b| b.der == c.der) {
            bundle.push(c.clone());
        }
    }
    bundle
}

/// The Secret's data after carrying out `plan`. Keys we do not manage are kept.
pub(crate) fn apply(
    plan: Plan,
    m: &Material,
    data: &Data,
    names: &[String],
    leaf_validity: Duration,
    ca_validity: Duration,
    now: SystemTime,
) -> Result<Data, Error> {
    // (CA, bundle, chain after the leaf, leaf)
    let (ca, bundle, extra, leaf) = match (plan, &m.authority) {
        (Plan::Keep | Plan::External, _) => return Ok(data.clone()),
        (Plan::Issue(_), _) | (_, None) => {
            let ca = Authority::generate(ca_validity, now)?;
            let leaf = ca.issue_leaf(names, leaf_validity, now)?;
            (ca, &m.bundle[..], Vec::new(), Some(leaf))
        }
        (Plan::RotateCa(_), Some(old)) => {
            let (ca, cross) = old.successor(ca_validity, now)?;
            let leaf = ca.issue_leaf(names, leaf_validity, now)?;
            (ca, &m.bundle[..], cross.into_iter().collect(), Some(leaf))
        }
        (Plan::RenewLeaf(_), Some(ca)) => {
            let leaf = ca.issue_leaf(names, leaf_validity, now)?;
            (
                ca.clone(),
                &m.bundle[..],
                cross_signed(ca, m, now),
                Some(leaf),
            )
        }
        (Plan::AddNames, Some(ca)) => {
            let mut all = names.to_vec();
            let wanted = normalize_names(names);
            if let Some(leaf) = &m.leaf {
                all.extend(leaf.cert().sans.difference(&wanted).cloned());
            }
            let leaf = ca.issue_leaf(&all, leaf_validity, now)?;
            (
                ca.clone(),
                &m.bundle[..],
                cross_signed(ca, m, now),
                Some(leaf),
            )
        }
        (Plan::Rebundle, Some(ca)) => (ca.clone(), &m.bundle[..], Vec::new(), None),
    };
    let mut out = data.clone();
    let bundle = bundle_with(&ca.cert, bundle, now);
    out.insert(CA_CRT.into(), concat_pem(&bundle).into_bytes());
    out.insert(CA_KEY.into(), ca.key_pem.clone().into_bytes());
    if let Some((cert, key_pem)) = leaf {
        let chain = concat_pem(std::iter::once(&cert).chain(&extra));
        out.insert(TLS_CRT.into(), chain.into_bytes());
        out.insert(TLS_KEY.into(), key_pem.into_bytes());
    }
    Ok(out)
}

/// The cross-signed certificates of `ca` in the chain served now, to keep serving with a new
/// leaf until they expire.
fn cross_signed(ca: &Authority, m: &Material, now: SystemTime) -> Vec<Cert> {
    let Some(leaf) = &m.leaf else {
        return Vec::new();
    };
    leaf.chain[1..]
        .iter()
        .filter(|c| {
            c.subject == ca.cert.subject
                && c.key_bits == ca.cert.key_bits
                && c.issuer != c.subject
                && !c.expired(now)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
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
}
