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
#[path = "pki_tests.rs"]
mod tests;
