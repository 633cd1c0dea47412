//! Certificate generation for the development CA: the root, the
//! intermediate, the TLS serving certificate and workload leaves.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use anyhow::{Context, Result};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use time::OffsetDateTime;

/// Lifetime of a generated root CA certificate.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a generated intermediate CA certificate.
pub const INTERMEDIATE_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Lifetime of a generated TLS serving certificate.
pub const SERVING_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// How far into the past every generated certificate's notBefore is set, so
/// that a client whose clock runs slightly behind still accepts it.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// DNS names in the TLS serving certificate.
pub const SERVING_DNS_NAMES: [&str; 2] = ["localhost", "istiod.istio-system.svc"];

/// A CA certificate with its key, ready to sign.
#[derive(Debug)]
pub struct CaCert {
    /// PEM encoding of the certificate.
    pub pem: String,
    /// The issuer: distinguished name, key identifier and signing key.
    pub issuer: Issuer<'static, KeyPair>,
}

impl CaCert {
    /// Loads a CA from its certificate PEM and its private key PEM.
    pub fn from_pem(pem: String, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).context("invalid CA private key PEM")?;
        let issuer = Issuer::from_ca_cert_pem(&pem, key).context("invalid CA certificate PEM")?;
        Ok(Self { pem, issuer })
    }
}

/// Generates a self-signed ECDSA P-256 root CA valid for [`ROOT_LIFETIME`].
pub fn generate_root() -> Result<CaCert> {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_name("root");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial());
    params.not_before = now - BACKDATE;
    params.not_after = now + ROOT_LIFETIME;
    let key = KeyPair::generate().context("failed to generate the root CA key")?;
    let cert = params
        .self_signed(&key)
        .context("failed to self-sign the root CA certificate")?;
    Ok(CaCert {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    })
}

/// Generates an ECDSA P-256 intermediate CA signed by `root`, valid from
/// [`BACKDATE`] ago for `lifetime`. The intermediate may sign leaves only.
pub fn generate_intermediate(root: &CaCert, lifetime: Duration) -> Result<CaCert> {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_name("intermediate");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
    let key = KeyPair::generate().context("failed to generate the intermediate CA key")?;
    let cert = params
        .signed_by(&key, &root.issuer)
        .context("failed to sign the intermediate CA certificate")?;
    Ok(CaCert {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    })
}

/// Generates the TLS serving certificate for `localhost`,
/// `istiod.istio-system.svc`, 127.0.0.1 and ::1, signed by `intermediate`.
/// Returns the certificate PEM and the PKCS#8 key PEM.
pub fn generate_serving(intermediate: &CaCert) -> Result<(String, String)> {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "meshcert-devca");

    params.subject_alt_names = SERVING_DNS_NAMES
        .iter()
        .map(|name| {
            let name = (*name)
                .try_into()
                .with_context(|| format!("invalid DNS name `{name}`"))?;
            Ok(SanType::DnsName(name))
        })
        .collect::<Result<Vec<_>>>()?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));

    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = now + SERVING_LIFETIME;

    let key = KeyPair::generate().context("failed to generate the serving key")?;
    let cert = params
        .signed_by(&key, &intermediate.issuer)
        .context("failed to sign the serving certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The content of a workload leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// SPIFFE ID placed in the only SAN, a URI.
    pub spiffe_id: String,
    /// Start of the validity period.
    pub not_before: OffsetDateTime,
    /// End of the validity period.
    pub not_after: OffsetDateTime,
}

/// A signed workload leaf certificate.
#[derive(Debug, Clone)]
pub struct SignedLeaf {
    /// PEM encoding of the certificate.
    pub pem: String,
    /// Serial number in lowercase hexadecimal.
    pub serial_hex: String,
}

/// Signs a workload leaf for `public_key`: empty subject, one URI SAN,
/// digitalSignature and keyEncipherment, serverAuth and clientAuth, not a CA,
/// and a random serial number.
pub fn sign_leaf(
    spec: &LeafSpec,
    public_key: &impl PublicKeyData,
    issuer: &Issuer<'_, impl rcgen::SigningKey>,
) -> Result<SignedLeaf> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = spec
        .spiffe_id
        .as_str()
        .try_into()
        .with_context(|| format!("invalid URI SAN `{}`", spec.spiffe_id))?;
    params.subject_alt_names = vec![SanType::URI(uri)];

    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];

    let serial = random_serial();
    let serial_hex = hex(serial.as_ref());
    params.serial_number = Some(serial);
    params.use_authority_key_identifier_extension = true;
    params.not_before = spec.not_before;
    params.not_after = spec.not_after;

    let cert = params
        .signed_by(public_key, issuer)
        .with_context(|| format!("failed to sign the leaf for {}", spec.spiffe_id))?;
    Ok(SignedLeaf {
        pem: cert.pem(),
        serial_hex,
    })
}

/// Returns a positive 16-octet serial number with 126 random bits. RFC 5280
/// allows serial numbers of up to 20 octets.
pub fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    // Clearing the top bit keeps the DER INTEGER positive without a leading
    // zero octet, and setting the next one keeps the length at 16 octets.
    bytes[0] &= 0x7f;
    bytes[0] |= 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Builds a CA distinguished name that differs between generations, so that
/// a rotated root is distinguishable from the previous one.
fn ca_name(role: &str) -> DistinguishedName {
    let mut suffix = [0u8; 4];
    rand::rng().fill_bytes(&mut suffix);
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "meshcert devca");
    name.push(
        DnType::CommonName,
        format!("meshcert devca {role} {}", hex(&suffix)),
    );
    name
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{FromDer, X509Certificate};

    fn parse_pem(pem: &str) -> Vec<u8> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("valid PEM");
        block.contents
    }

    #[test]
    fn serial_is_positive_and_16_octets() {
        for _ in 0..64 {
            let serial = random_serial();
            let bytes = serial.as_ref();
            assert_eq!(bytes.len(), 16);
            assert_eq!(bytes[0] & 0x80, 0);
        }
    }

    #[test]
    fn chain_signatures_verify() {
        let root = generate_root().unwrap();
        let intermediate = generate_intermediate(&root, INTERMEDIATE_LIFETIME).unwrap();
        let (serving_pem, _) = generate_serving(&intermediate).unwrap();

        let root_der = parse_pem(&root.pem);
        let intermediate_der = parse_pem(&intermediate.pem);
        let serving_der = parse_pem(&serving_pem);
        let (_, root_cert) = X509Certificate::from_der(&root_der).unwrap();
        let (_, intermediate_cert) = X509Certificate::from_der(&intermediate_der).unwrap();
        let (_, serving_cert) = X509Certificate::from_der(&serving_der).unwrap();

        assert!(root_cert.is_ca());
        assert!(intermediate_cert.is_ca());
        assert!(!serving_cert.is_ca());
        intermediate_cert
            .verify_signature(Some(root_cert.public_key()))
            .expect("intermediate signed by root");
        serving_cert
            .verify_signature(Some(intermediate_cert.public_key()))
            .expect("serving certificate signed by intermediate");
        assert_eq!(intermediate_cert.issuer(), root_cert.subject());
    }
}
