//! Soak: the dev CA serves 64 concurrent clients without errors and without
//! its resident memory growing.
//!
//! Each client is a task running the real issuance path (`Issuer::issue`:
//! fresh key, CSR, new TLS connection, validation) in a loop. The run lasts
//! 10 s by default and 60 s with `MESHCERT_LONG_TESTS=1`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshcert_common::ca::CaConfig;
use meshcert_common::csr::KeyType;
use meshcert_common::identity::SpiffeId;
use meshcert_common::issue::Issuer;
use meshcert_tests::reliability::{long_tests, status_kib, Workload, NAMESPACE, SERVICE_ACCOUNT};

/// Builds an issuer for the test workload that talks to `workload`'s CA.
fn issuer(workload: &Workload) -> Issuer {
    Issuer {
        ca: CaConfig {
            addr: workload.ca.addr().to_string(),
            server_name: "127.0.0.1".to_string(),
            root_pem: workload.ca.root_pem(),
            cluster_id: "Kubernetes".to_string(),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        },
        ca_root_path: workload.ca.root_pem_path(),
        spiffe_id: SpiffeId::new("cluster.local", NAMESPACE, SERVICE_ACCOUNT).unwrap(),
        token_file: workload.token_path(),
        key_type: KeyType::EcdsaP256,
        ttl: Duration::from_secs(3600),
        max_clock_skew: Duration::from_secs(300),
    }
}

#[test]
fn devca_serves_64_clients_steadily() {
    const CLIENTS: usize = 64;
    let duration = if long_tests() {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(10)
    };
    let workload = Workload::start("");
    let issuer = Arc::new(issuer(&workload));
    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let deadline = tokio::time::Instant::now() + duration;
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let issuer = Arc::clone(&issuer);
        let issued = Arc::clone(&issued);
        let errors = Arc::clone(&errors);
        clients.push(runtime.spawn(async move {
            let mut first_error = None;
            while tokio::time::Instant::now() < deadline {
                match issuer.issue().await {
                    Ok(_) => issued.fetch_add(1, Ordering::Relaxed),
                    Err(error) => {
                        first_error.get_or_insert(error.to_string());
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            first_error
        }));
    }

    let pid = workload.ca.pid();
    let mut rss_kib = Vec::new();
    let started = Instant::now();
    while started.elapsed() < duration {
        std::thread::sleep(Duration::from_secs(1));
        rss_kib.push(status_kib(pid, "VmRSS").expect("the CA exited"));
    }
    let first_errors: Vec<String> = runtime.block_on(async {
        let mut messages = Vec::new();
        for client in clients {
            if let Some(message) = client.await.unwrap() {
                messages.push(message);
            }
        }
        messages
    });

    let issued = issued.load(Ordering::Relaxed);
    let errors = errors.load(Ordering::Relaxed);
    let hwm = status_kib(pid, "VmHWM").unwrap_or(0);
    eprintln!(
        "{CLIENTS} clients for {duration:?}: {issued} certificates, {errors} errors; CA VmRSS \
         by second (KiB): {rss_kib:?}; VmHWM {hwm} KiB"
    );
    assert_eq!(errors, 0, "errors; first of each client: {first_errors:?}");
    assert!(
        issued >= CLIENTS as u64,
        "only {issued} certificates issued"
    );

    // Growth check: after the first quarter (connections and caches warm
    // up), the resident set must not keep rising.
    let warm = rss_kib.len() / 4;
    let warm_max = rss_kib[..=warm].iter().copied().max().unwrap();
    let late_max = rss_kib[warm..].iter().copied().max().unwrap();
    assert!(
        late_max <= warm_max + warm_max / 4 + 4096,
        "the CA's VmRSS grew from {warm_max} KiB to {late_max} KiB: {rss_kib:?}"
    );
}
