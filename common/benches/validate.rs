//! Validation of a CA answer shaped like the dev CA's: the leaf, the
//! intermediate and the root bundle, each an element of `cert_chain`.
//!
//! Run with `cargo bench -p meshcert-common --bench validate`.

use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use meshcert_common::bundle::{self, Expected};
use meshcert_common::csr::{KeyType, PrivateKey};
use meshcert_common::identity::SpiffeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// An answer and the key and identity it was issued for.
struct Answer {
    elements: Vec<String>,
    key: PrivateKey,
    spiffe_id: SpiffeId,
}

fn ca_params(name: &str, constraint: BasicConstraints) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(constraint);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Builds a P-256 root, an intermediate limited to signing leaves, and a
/// 24-hour leaf for a fresh workload key, as `meshcert-devca` issues them.
fn dev_ca_answer() -> Answer {
    let spiffe_id = SpiffeId::new("cluster.local", "default", "bench").unwrap();

    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_params("meshcert bench root", BasicConstraints::Unconstrained);
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);

    let intermediate_key = KeyPair::generate().unwrap();
    let mut intermediate_params = ca_params(
        "meshcert bench intermediate",
        BasicConstraints::Constrained(0),
    );
    intermediate_params.use_authority_key_identifier_extension = true;
    let intermediate = intermediate_params
        .signed_by(&intermediate_key, &root_issuer)
        .unwrap();
    let intermediate_issuer = Issuer::new(intermediate_params, intermediate_key);

    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let leaf_key = KeyPair::from_pem(key.pem()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let mut leaf_params = CertificateParams::default();
    leaf_params.distinguished_name = DistinguishedName::new();
    leaf_params.subject_alt_names = vec![SanType::URI(spiffe_id.uri().try_into().unwrap())];
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.not_before = now - Duration::from_secs(60);
    leaf_params.not_after = now + Duration::from_secs(24 * 3600);
    let leaf = leaf_params
        .signed_by(&leaf_key, &intermediate_issuer)
        .unwrap();

    Answer {
        elements: vec![leaf.pem(), intermediate.pem(), root.pem()],
        key,
        spiffe_id,
    }
}

fn validate_answer(c: &mut Criterion) {
    let answer = dev_ca_answer();
    let spki = answer.key.public_key_spki();
    let expected = Expected {
        spiffe_id: &answer.spiffe_id,
        public_key_spki: &spki,
        max_clock_skew: Duration::from_secs(300),
    };
    let now = SystemTime::now();
    bundle::validate_answer(&answer.elements, &expected, now).expect("the bench answer is valid");

    c.bench_function("validate_answer/leaf_intermediate_root", |b| {
        b.iter(|| bundle::validate_answer(&answer.elements, &expected, now).unwrap())
    });
}

criterion_group!(benches, validate_answer);
criterion_main!(benches);
