//! Publishing a set to the certificate directory: a new generation written
//! and fsynced, the `..data` swap, and removal of the generation before the
//! previous one.
//!
//! Run with `cargo bench -p meshcert-common --bench publish`. The directory
//! is `$MESHCERT_BENCH_DIR` when set (`scripts/bench.sh` points it at a
//! tmpfs, where the fsyncs are nearly free, as on a `medium: Memory`
//! emptyDir), otherwise a temporary directory.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use meshcert_common::certdir::{CertDir, OutputFile, CHAIN_FILE, KEY_FILE, ROOT_FILE};

/// Sizes of a P-256 key, a leaf with one intermediate, and one root, in PEM.
const KEY_BYTES: usize = 241;
const CHAIN_BYTES: usize = 1_400;
const ROOT_BYTES: usize = 650;

fn publish(c: &mut Criterion) {
    let parent = std::env::var_os("MESHCERT_BENCH_DIR").map(PathBuf::from);
    let temp = match &parent {
        Some(parent) => tempfile::tempdir_in(parent).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let dir = CertDir::new(temp.path(), None);
    dir.prepare().unwrap();
    let files = [
        OutputFile::secret(KEY_FILE, &vec![b'k'; KEY_BYTES]),
        OutputFile::public(CHAIN_FILE, &vec![b'c'; CHAIN_BYTES]),
        OutputFile::public(ROOT_FILE, &vec![b'r'; ROOT_BYTES]),
    ];

    c.bench_function("publish/three_files", |b| {
        b.iter(|| dir.publish(&files).unwrap())
    });
}

criterion_group!(benches, publish);
criterion_main!(benches);
