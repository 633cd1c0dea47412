//! Key generation and CSR signing for each key type meshcert offers, and
//! RSA key generation alone for each RSA size.
//!
//! Run with `cargo bench -p meshcert-common --bench csr`. RSA key generation
//! time varies with how many candidates the prime search rejects, so its
//! spread is wide; criterion reports the median and confidence interval.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use meshcert_common::csr::{KeyType, PrivateKey};
use meshcert_common::identity::SpiffeId;

fn key_and_csr(c: &mut Criterion) {
    let spiffe_id = SpiffeId::new("cluster.local", "default", "bench").unwrap();
    let mut group = c.benchmark_group("key_and_csr");

    for key_type in [KeyType::EcdsaP256, KeyType::EcdsaP384] {
        group.bench_with_input(
            BenchmarkId::from_parameter(key_type),
            &key_type,
            |b, &key_type| {
                b.iter(|| {
                    let key = PrivateKey::generate(key_type).unwrap();
                    key.csr_pem(&spiffe_id).unwrap()
                })
            },
        );
    }

    // A 2048-bit RSA key takes about 100 ms, so this case takes fewer samples.
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_with_input(
        BenchmarkId::from_parameter(KeyType::Rsa2048),
        &KeyType::Rsa2048,
        |b, &key_type| {
            b.iter(|| {
                let key = PrivateKey::generate(key_type).unwrap();
                key.csr_pem(&spiffe_id).unwrap()
            })
        },
    );
    group.finish();
}

/// RSA key generation alone for each size, to see what the pure-Rust `rsa`
/// crate costs as keys grow; ring cannot generate RSA keys.
fn rsa_key_generation(c: &mut Criterion) {
    let mut group = c.benchmark_group("rsa_key_generation");
    // Ten samples is the minimum criterion accepts, and a 4096-bit key takes about a second.
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for key_type in [KeyType::Rsa2048, KeyType::Rsa3072, KeyType::Rsa4096] {
        group.bench_with_input(
            BenchmarkId::from_parameter(key_type),
            &key_type,
            |b, &key_type| b.iter(|| PrivateKey::generate(key_type).unwrap()),
        );
    }
    group.finish();
}

criterion_group!(benches, key_and_csr, rsa_key_generation);
criterion_main!(benches);
