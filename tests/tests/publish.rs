//! Tests of the certificate directory writer on real files: what concurrent
//! readers see during publishes, and what is left after failures.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use meshcert_common::certdir::{CertDir, OutputFile, DATA_LINK};

const NAMES: [&str; 3] = ["key.pem", "cert-chain.pem", "root-cert.pem"];

/// Contents of `name` in generation `n`: a header, a body long enough to
/// need several writes, and a trailer naming the same generation.
fn contents(name: &str, n: usize) -> String {
    let body = format!("{name} generation {n}\n").repeat(2_000);
    format!("BEGIN {n}\n{body}END {n}\n")
}

fn files(n: usize) -> Vec<OutputFile> {
    NAMES
        .iter()
        .map(|name| {
            if *name == "key.pem" {
                OutputFile::secret(name, contents(name, n).as_bytes())
            } else {
                OutputFile::public(name, contents(name, n).as_bytes())
            }
        })
        .collect()
}

/// Returns the generation number of a complete file, or panics describing the defect.
fn generation_of(name: &str, text: &str) -> usize {
    let first = text.lines().next().unwrap_or_default();
    let n: usize = first
        .strip_prefix("BEGIN ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name}: missing header in {} bytes", text.len()));
    assert_eq!(text, contents(name, n), "{name}: partial or mixed contents");
    n
}

#[test]
fn readers_never_see_partial_files() {
    let dir = tempfile::tempdir().unwrap();
    let cert_dir = CertDir::new(dir.path(), None);
    cert_dir.prepare().unwrap();
    cert_dir.publish(&files(0)).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for reader in 0..2 {
        let done = Arc::clone(&done);
        let path = dir.path().to_path_buf();
        readers.push(thread::spawn(move || {
            let mut reads = 0usize;
            while !done.load(Ordering::Relaxed) {
                if reader == 0 {
                    for name in NAMES {
                        let text = fs::read_to_string(path.join(name))
                            .unwrap_or_else(|e| panic!("{name} missing during a publish: {e}"));
                        generation_of(name, &text);
                    }
                } else {
                    let generation = fs::read_link(path.join(DATA_LINK)).unwrap();
                    let generation_dir = path.join(&generation);
                    let mut seen = Vec::new();
                    for name in NAMES {
                        match fs::read_to_string(generation_dir.join(name)) {
                            Ok(text) => seen.push(generation_of(name, &text)),
                            Err(error) => {
                                // The writer keeps one previous generation, so a
                                // reader that resolved ..data two publishes ago
                                // may find it gone; that is the documented limit.
                                let now = fs::read_link(path.join(DATA_LINK)).unwrap();
                                assert_ne!(
                                    now, generation,
                                    "{name} missing in the current generation: {error}"
                                );
                                break;
                            }
                        }
                    }
                    assert!(
                        seen.iter().all(|&n| n == seen[0]),
                        "one resolved ..data gives one issuance: {seen:?}"
                    );
                }
                reads += 1;
            }
            reads
        }));
    }

    for n in 1..=200 {
        cert_dir.publish(&files(n)).unwrap();
    }
    done.store(true, Ordering::Relaxed);
    for reader in readers {
        let reads = reader.join().expect("reader saw a defect");
        assert!(reads > 0, "reader ran");
    }
    let generations = cert_dir.generations();
    assert_eq!(
        generations.len(),
        2,
        "current and previous kept: {generations:?}"
    );
}

#[test]
fn publish_keeps_previous_generation_only() {
    let dir = tempfile::tempdir().unwrap();
    let cert_dir = CertDir::new(dir.path(), None);
    let first = cert_dir.publish(&files(1)).unwrap();
    let second = cert_dir.publish(&files(2)).unwrap();
    let third = cert_dir.publish(&files(3)).unwrap();
    let generations = cert_dir.generations();
    assert!(
        !generations.contains(&first),
        "oldest removed: {generations:?}"
    );
    assert!(
        generations.contains(&second),
        "previous kept: {generations:?}"
    );
    assert!(
        generations.contains(&third),
        "current kept: {generations:?}"
    );
    assert_eq!(cert_dir.current_generation(), Some(third));
}

#[test]
fn prepare_removes_stray_generations() {
    let dir = tempfile::tempdir().unwrap();
    let cert_dir = CertDir::new(dir.path(), None);
    let current = cert_dir.publish(&files(1)).unwrap();
    let stray = dir.path().join("..2999_01_01_00_00_00.000000001");
    fs::create_dir(&stray).unwrap();
    fs::write(stray.join("key.pem"), "partial").unwrap();
    std::os::unix::fs::symlink("..nothing", dir.path().join("..data_tmp")).unwrap();

    cert_dir.prepare().unwrap();
    assert!(!stray.exists(), "unpublished generation removed");
    assert!(
        !dir.path().join("..data_tmp").exists(),
        "temporary link removed"
    );
    assert_eq!(cert_dir.current_generation(), Some(current));
    let text = fs::read_to_string(dir.path().join("key.pem")).unwrap();
    assert_eq!(generation_of("key.pem", &text), 1);
}

/// Mounts a tmpfs of `size` at `path`; returns false when not root.
fn mount_tmpfs(path: &Path, size: &str) -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        return false;
    }
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mount a tmpfs");
    true
}

#[test]
fn publish_keeps_old_set_on_full_disk() {
    let dir = tempfile::tempdir().unwrap();
    if !mount_tmpfs(dir.path(), "200k") {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let cert_dir = CertDir::new(dir.path(), None);
    let small: Vec<OutputFile> = NAMES
        .iter()
        .map(|name| OutputFile::public(name, format!("small {name}\n").as_bytes()))
        .collect();
    let current = cert_dir.publish(&small).unwrap();
    let large: Vec<OutputFile> = NAMES
        .iter()
        .map(|name| OutputFile::public(name, &vec![b'x'; 150 * 1024]))
        .collect();
    let error = cert_dir.publish(&large).err();
    let generations = cert_dir.generations();
    let current_after = cert_dir.current_generation();
    let texts: Vec<String> = NAMES
        .iter()
        .map(|name| fs::read_to_string(dir.path().join(name)).unwrap_or_default())
        .collect();
    let _ = Command::new("umount").arg(dir.path()).status();

    let error = error.expect("a publish that does not fit fails");
    assert!(
        error.to_string().contains("previous set stays published"),
        "{error}"
    );
    assert_eq!(current_after, Some(current.clone()), "..data unchanged");
    assert_eq!(generations, vec![current], "partial generation removed");
    for (name, text) in NAMES.iter().zip(texts) {
        assert_eq!(text, format!("small {name}\n"), "{name} intact");
    }
}

#[test]
fn prepare_leaves_directory_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let cert_dir = CertDir::new(dir.path(), None);
    cert_dir.publish(&files(1)).unwrap();
    let before = fs::metadata(dir.path()).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));

    cert_dir.prepare().unwrap();
    let after = fs::metadata(dir.path()).unwrap().modified().unwrap();
    assert_eq!(
        before, after,
        "prepare created or removed no entry, so watchers see nothing"
    );
}
