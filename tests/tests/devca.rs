//! End-to-end tests of `meshcert-devca serve`: a real process, real TLS over
//! loopback and a real tonic gRPC client.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use meshcert_common::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use meshcert_common::pb::IstioCertificateRequest;
use meshcert_tests::devca::issue::GARBAGE_PEM;
use meshcert_tests::devca::state;
use meshcert_tests::{bin_path, DevCa, DevCaOptions, TokenOptions};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Status};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

const NAMESPACE: &str = "apps";
const SERVICE_ACCOUNT: &str = "web";
const IDENTITY: &str = "spiffe://cluster.local/ns/apps/sa/web";
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

fn start(options: DevCaOptions) -> DevCa {
    DevCa::start(options).unwrap_or_else(|error| panic!("failed to start the CA: {error:#}"))
}

async fn connect(ca: &DevCa) -> IstioCertificateServiceClient<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.root_pem()))
        .domain_name("localhost");
    let channel = Channel::from_shared(ca.endpoint())
        .expect("valid endpoint")
        .tls_config(tls)
        .expect("valid TLS config")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|error| panic!("failed to connect to {}: {error:?}", ca.endpoint()));
    IstioCertificateServiceClient::new(channel)
}

fn csr_for(key: &KeyPair, configure: impl FnOnce(&mut CertificateParams)) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(IDENTITY.try_into().unwrap())];
    configure(&mut params);
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn web_token(ca: &DevCa) -> String {
    ca.token(NAMESPACE, SERVICE_ACCOUNT, &TokenOptions::default())
}

async fn create(
    client: &mut IstioCertificateServiceClient<Channel>,
    token: Option<&str>,
    csr: &str,
    validity_seconds: i64,
) -> Result<Vec<String>, Status> {
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr: csr.to_owned(),
        validity_duration: validity_seconds,
        metadata: None,
    });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
        .metadata_mut()
        .insert("clusterid", "Kubernetes".parse().unwrap());
    let response = tokio::time::timeout(CALL_TIMEOUT, client.create_certificate(request))
        .await
        .expect("CreateCertificate should answer within the test's call timeout")?;
    Ok(response.into_inner().cert_chain)
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap_or_else(|error| panic!("invalid certificate PEM ({error}):\n{pem}"))
        .to_vec()
}

fn pem_count(pem: &str) -> usize {
    CertificateDer::pem_slice_iter(pem.as_bytes()).count()
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let san = cert
        .subject_alternative_name()
        .expect("valid SAN extension")
        .expect("leaf has a SAN extension");
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

fn lifetime_secs(cert: &X509Certificate<'_>) -> i64 {
    cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()
}

/// Runs `openssl verify -CAfile root -untrusted intermediate leaf` and
/// returns whether it succeeded, with its output.
fn openssl_verify(dir: &Path, root: &str, intermediate: &str, leaf: &str) -> (bool, String) {
    let root_path = dir.join("verify-root.pem");
    let intermediate_path = dir.join("verify-intermediate.pem");
    let leaf_path = dir.join("verify-leaf.pem");
    std::fs::write(&root_path, root).unwrap();
    std::fs::write(&intermediate_path, intermediate).unwrap();
    std::fs::write(&leaf_path, leaf).unwrap();
    let output = Command::new("/usr/bin/openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&root_path)
        .arg("-untrusted")
        .arg(&intermediate_path)
        .arg(&leaf_path)
        .output()
        .expect("failed to run /usr/bin/openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Generates a private key with `openssl genpkey` and loads it into rcgen.
/// OpenSSL is used because rcgen with ring cannot generate RSA keys.
fn openssl_key(dir: &Path, name: &str, options: &[&str]) -> (KeyPair, std::path::PathBuf) {
    let path = dir.join(format!("{name}.pem"));
    // `output()` captures the progress dots that genpkey prints for RSA.
    let output = Command::new("/usr/bin/openssl")
        .arg("genpkey")
        .args(options)
        .arg("-out")
        .arg(&path)
        .output()
        .expect("failed to run /usr/bin/openssl");
    assert!(
        output.status.success(),
        "openssl genpkey {options:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pem = std::fs::read_to_string(&path).unwrap();
    let key = KeyPair::from_pem(&pem).unwrap_or_else(|error| panic!("{name}: {error}"));
    (key, path)
}

fn assert_code(result: Result<Vec<String>, Status>, code: Code) -> Status {
    match result {
        Ok(chain) => panic!("expected {code:?}, got a chain of {} elements", chain.len()),
        Err(status) => {
            assert_eq!(status.code(), code, "unexpected status: {status:?}");
            status
        }
    }
}

#[tokio::test]
async fn chain_verifies_for_key_types() {
    let mut ca = start(DevCaOptions::default());
    let mut client = connect(&ca).await;
    let token = web_token(&ca);
    let dir = ca.temp_dir().to_owned();

    let mut keys = vec![
        ("P-256".to_owned(), KeyPair::generate().unwrap()),
        (
            "P-384".to_owned(),
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
        ),
    ];
    for bits in [2048, 3072, 4096] {
        let name = format!("RSA-{bits}");
        let option = format!("rsa_keygen_bits:{bits}");
        let (key, _) = openssl_key(&dir, &name, &["-algorithm", "RSA", "-pkeyopt", &option]);
        keys.push((name, key));
    }

    let mut serials = Vec::new();
    for (label, key) in &keys {
        let csr = csr_for(key, |_| {});
        let chain = create(&mut client, Some(&token), &csr, 3600)
            .await
            .unwrap_or_else(|status| panic!("{label}: {status:?}"));
        assert_eq!(chain.len(), 3, "{label}: chain length");
        assert_eq!(chain[2], ca.root_pem(), "{label}: last element is the root");

        let leaf_der = der_of(&chain[0]);
        let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
        assert_eq!(
            uri_sans(&leaf),
            vec![IDENTITY.to_owned()],
            "{label}: URI SAN"
        );
        assert_eq!(
            leaf.public_key().raw,
            key.subject_public_key_info().as_slice(),
            "{label}: leaf certifies the CSR key"
        );
        assert_eq!(
            leaf.subject().iter_attributes().count(),
            0,
            "{label}: empty subject"
        );
        assert!(!leaf.is_ca(), "{label}: leaf is not a CA");
        let key_usage = leaf.key_usage().unwrap().expect("key usage present").value;
        assert!(key_usage.digital_signature(), "{label}: digitalSignature");
        assert!(key_usage.key_encipherment(), "{label}: keyEncipherment");
        let eku = leaf
            .extended_key_usage()
            .unwrap()
            .expect("EKU present")
            .value;
        assert!(eku.server_auth, "{label}: serverAuth");
        assert!(eku.client_auth, "{label}: clientAuth");
        assert!(leaf.raw_serial().len() >= 8, "{label}: serial has 64+ bits");
        assert_eq!(
            leaf.raw_serial()[0] & 0x80,
            0,
            "{label}: serial is positive"
        );
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let not_before = leaf.validity().not_before.timestamp();
        assert!(
            not_before <= now - 50 && not_before >= now - 80,
            "{label}: back-dated notBefore"
        );
        assert_eq!(lifetime_secs(&leaf), 3600 + 60, "{label}: lifetime");
        serials.push(leaf.raw_serial().to_vec());

        let (verified, output) = openssl_verify(&dir, &chain[2], &chain[1], &chain[0]);
        assert!(verified, "{label}: openssl verify failed: {output}");
    }
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), keys.len(), "serial numbers are unique");

    ca.wait_for_log(Duration::from_secs(5), |log| log.contains("Kubernetes"))
        .expect("the CA logs the clusterid metadata");
    ca.wait_for_log(Duration::from_secs(5), |log| {
        log.matches("issued certificate").count() == keys.len()
    })
    .expect("the CA logs every issuance");
    assert!(ca.stop().unwrap().success(), "exit status after SIGTERM");
}

#[tokio::test]
async fn accepts_p384_key_in_sha256_csr() {
    // The key type must come from the key, not from the CSR's signature
    // algorithm: OpenSSL signs this P-384 request with ECDSA-SHA256.
    let ca = start(DevCaOptions::default());
    let dir = ca.temp_dir().to_owned();
    let (_, key_path) = openssl_key(
        &dir,
        "p384",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    );
    let csr_path = dir.join("p384.csr");
    let status = Command::new("/usr/bin/openssl")
        .args(["req", "-new", "-sha256", "-subj", "/"])
        .arg("-key")
        .arg(&key_path)
        .arg("-addext")
        .arg(format!("subjectAltName=URI:{IDENTITY}"))
        .arg("-out")
        .arg(&csr_path)
        .status()
        .unwrap();
    assert!(status.success(), "openssl req failed");
    let csr = std::fs::read_to_string(&csr_path).unwrap();

    let mut client = connect(&ca).await;
    let chain = create(&mut client, Some(&web_token(&ca)), &csr, 0)
        .await
        .unwrap();
    let (verified, output) = openssl_verify(&dir, &chain[2], &chain[1], &chain[0]);
    assert!(verified, "openssl verify failed: {output}");
    let leaf_der = der_of(&chain[0]);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let key_pem = std::fs::read_to_string(&key_path).unwrap();
    let key = KeyPair::from_pem(&key_pem).unwrap();
    assert_eq!(
        leaf.public_key().raw,
        key.subject_public_key_info().as_slice()
    );
}

#[tokio::test]
async fn rejects_missing_and_invalid_tokens() {
    let ca = start(DevCaOptions::default());
    let mut client = connect(&ca).await;
    let csr = csr_for(&KeyPair::generate().unwrap(), |_| {});

    let status = assert_code(
        create(&mut client, None, &csr, 0).await,
        Code::Unauthenticated,
    );
    assert!(
        status.message().contains("authorization"),
        "{}",
        status.message()
    );

    let status = assert_code(
        create(&mut client, Some("not-a-jwt"), &csr, 0).await,
        Code::Unauthenticated,
    );
    assert!(
        status.message().contains("invalid service-account token"),
        "{}",
        status.message()
    );

    let wrong_audience = TokenOptions {
        audiences: vec!["kubernetes".to_owned()],
        ..TokenOptions::default()
    };
    let token = ca.token(NAMESPACE, SERVICE_ACCOUNT, &wrong_audience);
    let status = assert_code(
        create(&mut client, Some(&token), &csr, 0).await,
        Code::Unauthenticated,
    );
    assert!(
        status.message().contains("istio-ca"),
        "{}",
        status.message()
    );

    let expired = TokenOptions {
        expired: true,
        ..TokenOptions::default()
    };
    let token = ca.token(NAMESPACE, SERVICE_ACCOUNT, &expired);
    let status = assert_code(
        create(&mut client, Some(&token), &csr, 0).await,
        Code::Unauthenticated,
    );
    assert!(status.message().contains("expired"), "{}", status.message());

    let other_state = ca.temp_dir().join("other-state");
    state::ensure(&other_state).unwrap();
    let foreign_token = state::load_token_key(&other_state)
        .unwrap()
        .mint(&meshcert_tests::devca::token::TokenRequest::new(
            NAMESPACE,
            SERVICE_ACCOUNT,
        ))
        .unwrap();
    let status = assert_code(
        create(&mut client, Some(&foreign_token), &csr, 0).await,
        Code::Unauthenticated,
    );
    assert!(
        status.message().contains("signature"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn rejects_csr_for_other_identity() {
    let ca = start(DevCaOptions::default());
    let mut client = connect(&ca).await;
    let other = "spiffe://cluster.local/ns/apps/sa/admin";
    let csr = csr_for(&KeyPair::generate().unwrap(), |params| {
        params.subject_alt_names = vec![SanType::URI(other.try_into().unwrap())];
    });
    let status = assert_code(
        create(&mut client, Some(&web_token(&ca)), &csr, 0).await,
        Code::PermissionDenied,
    );
    assert!(status.message().contains(other), "{}", status.message());
    assert!(status.message().contains(IDENTITY), "{}", status.message());
}

#[tokio::test]
async fn rejects_malformed_csrs() {
    let ca = start(DevCaOptions::default());
    let mut client = connect(&ca).await;
    let token = web_token(&ca);
    let key = KeyPair::generate().unwrap();

    let with_cn = csr_for(&key, |params| {
        params.distinguished_name.push(DnType::CommonName, "web");
    });
    let status = assert_code(
        create(&mut client, Some(&token), &with_cn, 0).await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("subject"), "{}", status.message());

    let with_dns = csr_for(&key, |params| {
        params
            .subject_alt_names
            .push(SanType::DnsName("web.apps.svc".try_into().unwrap()));
    });
    let status = assert_code(
        create(&mut client, Some(&token), &with_dns, 0).await,
        Code::InvalidArgument,
    );
    assert!(
        status.message().contains("web.apps.svc"),
        "{}",
        status.message()
    );

    let status = assert_code(
        create(&mut client, Some(&token), "garbage", 0).await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("PEM"), "{}", status.message());
}

#[tokio::test]
async fn unavailable_first_two_calls() {
    let ca = start(DevCaOptions {
        fault: Some("unavailable-first=2".to_owned()),
        ..DevCaOptions::default()
    });
    let mut client = connect(&ca).await;
    let token = web_token(&ca);
    let csr = csr_for(&KeyPair::generate().unwrap(), |_| {});
    assert_code(
        create(&mut client, Some(&token), &csr, 0).await,
        Code::Unavailable,
    );
    assert_code(
        create(&mut client, Some(&token), &csr, 0).await,
        Code::Unavailable,
    );
    let chain = create(&mut client, Some(&token), &csr, 0)
        .await
        .expect("third call succeeds");
    assert_eq!(chain.len(), 3);
}

#[tokio::test]
async fn stall_hits_client_timeout() {
    let mut ca = start(DevCaOptions::default());
    ca.set_fault("stall").unwrap();
    let mut client = connect(&ca).await;
    let csr = csr_for(&KeyPair::generate().unwrap(), |_| {});
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 0,
        metadata: None,
    });
    request.set_timeout(Duration::from_millis(500));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", web_token(&ca)).parse().unwrap(),
    );
    let started = Instant::now();
    let result = tokio::time::timeout(CALL_TIMEOUT, client.create_certificate(request))
        .await
        .expect("the gRPC timeout should fire before the test's call timeout");
    let status = result.expect_err("a stalled call cannot succeed");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "unexpected status: {status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    let stopping = Instant::now();
    assert!(ca.stop().unwrap().success(), "exit status after SIGTERM");
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        stopping.elapsed()
    );
}

#[tokio::test]
async fn ttl_defaults_and_caps() {
    let ca = start(DevCaOptions::default());
    let mut client = connect(&ca).await;
    let token = web_token(&ca);
    let csr = csr_for(&KeyPair::generate().unwrap(), |_| {});

    // (requested seconds, expected lifetime including the 60 s back-dating)
    let cases = [
        (600, 600 + 60),
        (0, 24 * 3600 + 60),
        (-1, 24 * 3600 + 60),
        (30 * 24 * 3600, 48 * 3600 + 60),
    ];
    for (requested, expected) in cases {
        let chain = create(&mut client, Some(&token), &csr, requested)
            .await
            .unwrap();
        let der = der_of(&chain[0]);
        let (_, leaf) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(lifetime_secs(&leaf), expected, "requested {requested}s");
    }

    ca.set_fault("ttl=90s").unwrap();
    let chain = create(&mut client, Some(&token), &csr, 3600).await.unwrap();
    let der = der_of(&chain[0]);
    let (_, leaf) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(
        lifetime_secs(&leaf),
        90 + 9,
        "ttl fault overrides the request; a short lifetime is back-dated by a tenth"
    );
}

#[tokio::test]
async fn ttl_flags_change_policy() {
    let ca = start(DevCaOptions {
        default_ttl: Some(Duration::from_secs(1800)),
        max_ttl: Some(Duration::from_secs(3600)),
        ..DevCaOptions::default()
    });
    let mut client = connect(&ca).await;
    let token = web_token(&ca);
    let csr = csr_for(&KeyPair::generate().unwrap(), |_| {});
    for (requested, expected) in [(0, 1800 + 60), (7200, 3600 + 60)] {
        let chain = create(&mut client, Some(&token), &csr, requested)
            .await
            .unwrap();
        let der = der_of(&chain[0]);
        let (_, leaf) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(lifetime_secs(&leaf), expected, "requested {requested}s");
    }
}

#[tokio::test]
async fn faults_shape_responses() {
    let ca = start(DevCaOptions::default());
    let mut client = connect(&ca).await;
    let token = web_token(&ca);
    let key = KeyPair::generate().unwrap();
    let csr = csr_for(&key, |_| {});
    let dir = ca.temp_dir().to_owned();
    let root = ca.root_pem();
    let now = OffsetDateTime::now_utc().unix_timestamp();

    ca.set_fault("short-chain").unwrap();
    let chain = create(&mut client, Some(&token), &csr, 0).await.unwrap();
    assert_eq!(chain.len(), 1, "short-chain");

    ca.set_fault("reverse-chain").unwrap();
    let chain = create(&mut client, Some(&token), &csr, 0).await.unwrap();
    assert_eq!(chain.len(), 3, "reverse-chain");
    assert_eq!(chain[0], root, "reverse-chain starts with the root");
    let der = der_of(&chain[2]);
    let (_, leaf) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(
        uri_sans(&leaf),
        vec![IDENTITY.to_owned()],
        "reverse-chain ends with the leaf"
    );

    ca.set_fault("garbage-pem").unwrap();
    let chain = create(&mut client, Some(&token), &csr, 0).await.unwrap();
    assert_eq!(chain[0], GARBAGE_PEM, "garbage-pem");
    assert_eq!(chain.len(), 3, "garbage-pem");

    ca.set_fault("other-san").unwrap();
    let chain = create(&mut client, Some(&token), &csr, 0).await.unwrap();
    let der = der_of(&chain[0]);
    let (_, leaf) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(
        uri_sans(&leaf),
        vec!["spiffe://cluster.local/ns/other/sa/other".to_owned()],
        "other-san"
    );

    ca.set_fault("leaf-other-key").unwrap();
    let chain = create(&mut client, Some(&token), &csr, 0).await.unwrap();
    let der = der_of(&chain[0]);
    let (_, leaf) = X509Certificate::from_der(&der).unwrap();
    assert_ne!(
        leaf.public_key().raw,
        key.subject_public_key_info().as_slice(),
        "leaf-other-key"
    );
    let (verified, output) = openssl_verify(&dir, &chain[2], &chain[1], &chain[0]);
    assert!(verified, "leaf-other-key chain still verifies: {output}");

    ca.set_fault("expired-leaf").unwrap();
    let chain = create(&mut client, Some(&token), &csr, 0).await.unwrap();
    let der = der_of(&chain[0]);
    let (_, leaf) = X509Certificate::from_der(&der).unwrap();
    assert!(leaf.validity().not_after.timestamp() < now, "expired-leaf");

    ca.set_fault("not-yet-valid=1h").unwrap();
    let chain = create(&mut client, Some(&token), &csr, 600).await.unwrap();
    let der = der_of(&chain[0]);
    let (_, leaf) = X509Certificate::from_der(&der).unwrap();
    assert!(
        leaf.validity().not_before.timestamp() >= now + 3500,
        "not-yet-valid"
    );
    assert_eq!(lifetime_secs(&leaf), 600, "not-yet-valid keeps the TTL");

    ca.set_fault("broken-chain").unwrap();
    let chain = create(&mut client, Some(&token), &csr, 0).await.unwrap();
    let (verified, output) = openssl_verify(&dir, &chain[2], &chain[1], &chain[0]);
    assert!(!verified, "broken-chain must not verify: {output}");

    ca.set_fault("intermediate-expires=2h").unwrap();
    let chain = create(&mut client, Some(&token), &csr, 0).await.unwrap();
    let der = der_of(&chain[1]);
    let (_, intermediate) = X509Certificate::from_der(&der).unwrap();
    let not_after = intermediate.validity().not_after.timestamp();
    assert!(
        (now + 7000..=now + 7300).contains(&not_after),
        "intermediate-expires: notAfter {not_after}, now {now}"
    );
    let (verified, output) = openssl_verify(&dir, &chain[2], &chain[1], &chain[0]);
    assert!(verified, "intermediate-expires chain verifies: {output}");

    ca.set_fault("delay=300ms").unwrap();
    let started = Instant::now();
    create(&mut client, Some(&token), &csr, 0).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300), "delay");

    ca.set_fault("internal").unwrap();
    assert_code(
        create(&mut client, Some(&token), &csr, 0).await,
        Code::Internal,
    );

    ca.set_fault("short-chain,bogus").unwrap();
    let status = assert_code(
        create(&mut client, Some(&token), &csr, 0).await,
        Code::Internal,
    );
    assert!(status.message().contains("`bogus`"), "{}", status.message());
    assert!(
        status.message().contains("accepted items"),
        "{}",
        status.message()
    );

    ca.set_fault("").unwrap();
    let chain = create(&mut client, Some(&token), &csr, 0).await.unwrap();
    assert_eq!(chain.len(), 3, "empty fault file means no fault");
}

#[tokio::test]
async fn huge_response_exceeds_default_limit() {
    let ca = start(DevCaOptions {
        fault: Some("huge=8388608".to_owned()),
        ..DevCaOptions::default()
    });
    let token = web_token(&ca);
    let csr = csr_for(&KeyPair::generate().unwrap(), |_| {});

    // tonic 0.14 clients reject messages over 4 MiB by default
    // (DEFAULT_MAX_RECV_MESSAGE_SIZE).
    let mut client = connect(&ca).await;
    let status = assert_code(
        create(&mut client, Some(&token), &csr, 0).await,
        Code::OutOfRange,
    );
    assert!(
        status.message().contains("message length too large"),
        "{}",
        status.message()
    );

    let mut client = connect(&ca)
        .await
        .max_decoding_message_size(16 * 1024 * 1024);
    let chain = create(&mut client, Some(&token), &csr, 0).await.unwrap();
    assert_eq!(chain.len(), 4);
    assert_eq!(chain[3].len(), 8_388_608);
}

#[tokio::test]
async fn fault_file_none_overrides_start_fault() {
    let ca = start(DevCaOptions {
        fault: Some("internal".to_owned()),
        ..DevCaOptions::default()
    });
    let mut client = connect(&ca).await;
    let token = web_token(&ca);
    let csr = csr_for(&KeyPair::generate().unwrap(), |_| {});
    assert_code(
        create(&mut client, Some(&token), &csr, 0).await,
        Code::Internal,
    );
    ca.set_fault("none").unwrap();
    create(&mut client, Some(&token), &csr, 0).await.unwrap();
}

#[test]
fn unknown_start_fault_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(bin_path("meshcert-devca"))
        .args(["serve", "--listen", "127.0.0.1:0", "--fault", "stall,bogus"])
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`bogus`"), "{stderr}");
    assert!(stderr.contains("accepted items"), "{stderr}");
}

#[tokio::test]
async fn token_command_prints_usable_token() {
    let state_dir = tempfile::tempdir().unwrap();
    let output = Command::new(bin_path("meshcert-devca"))
        .args([
            "token",
            "--namespace",
            NAMESPACE,
            "--service-account",
            SERVICE_ACCOUNT,
        ])
        .args(["--ttl", "10m", "--issuer", "https://issuer.example"])
        .arg("--state-dir")
        .arg(state_dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();

    use base64::Engine;
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "JWT has three parts");
    let decode = |part: &str| -> serde_json::Value {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let header = decode(parts[0]);
    assert_eq!(header["alg"], "ES256");
    assert!(header["kid"].is_string());
    let claims = decode(parts[1]);
    assert_eq!(claims["aud"], serde_json::json!(["istio-ca"]));
    assert_eq!(claims["iss"], "https://issuer.example");
    assert_eq!(claims["sub"], "system:serviceaccount:apps:web");
    assert_eq!(claims["kubernetes.io"]["namespace"], NAMESPACE);
    assert_eq!(
        claims["kubernetes.io"]["serviceaccount"]["name"],
        SERVICE_ACCOUNT
    );
    assert!(claims["kubernetes.io"]["pod"]["uid"].is_string());
    let exp = claims["exp"].as_i64().unwrap();
    let iat = claims["iat"].as_i64().unwrap();
    assert_eq!(exp - iat, 600);

    let ca = start(DevCaOptions {
        state_dir: Some(state_dir.path().to_owned()),
        ..DevCaOptions::default()
    });
    let mut client = connect(&ca).await;
    let csr = csr_for(&KeyPair::generate().unwrap(), |_| {});
    create(&mut client, Some(&token), &csr, 0)
        .await
        .expect("a token from the CLI is accepted");

    let output = Command::new(bin_path("meshcert-devca"))
        .args([
            "token",
            "--namespace",
            NAMESPACE,
            "--service-account",
            SERVICE_ACCOUNT,
            "--expired",
        ])
        .arg("--state-dir")
        .arg(state_dir.path())
        .output()
        .unwrap();
    assert!(output.status.success());
    let expired = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert_code(
        create(&mut client, Some(&expired), &csr, 0).await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn cas_share_empty_state_dir() {
    let shared = tempfile::tempdir().unwrap();
    let state_dir = shared.path().join("state");
    let starters: Vec<_> = (0..3)
        .map(|_| {
            let state_dir = state_dir.clone();
            std::thread::spawn(move || {
                start(DevCaOptions {
                    state_dir: Some(state_dir),
                    ..DevCaOptions::default()
                })
            })
        })
        .collect();
    let cas: Vec<DevCa> = starters.into_iter().map(|t| t.join().unwrap()).collect();
    let bundle = cas[0].root_pem();
    assert_eq!(pem_count(&bundle), 1);

    let token = web_token(&cas[0]);
    let csr = csr_for(&KeyPair::generate().unwrap(), |_| {});
    for ca in &cas {
        let mut client = connect(ca).await;
        let chain = create(&mut client, Some(&token), &csr, 0).await.unwrap();
        assert_eq!(chain[2], bundle, "every CA serves the same root");
    }
}

#[tokio::test]
async fn root_rotation_with_sighup() {
    let ca = start(DevCaOptions::default());
    let mut client = connect(&ca).await;
    let token = web_token(&ca);
    let csr = csr_for(&KeyPair::generate().unwrap(), |_| {});
    let dir = ca.temp_dir().to_owned();
    let old_root = ca.root_pem();

    ca.rotate_root()
        .unwrap_or_else(|error| panic!("rotation failed: {error:#}"));
    let bundle = ca.root_pem();
    assert_eq!(
        pem_count(&bundle),
        2,
        "bundle holds the new and the old root"
    );
    assert!(bundle.ends_with(&old_root), "old root comes second");
    let new_root = bundle.strip_suffix(&old_root).unwrap().to_owned();

    // The existing connection still works: the serving certificate is not
    // replaced on SIGHUP.
    let chain = create(&mut client, Some(&token), &csr, 0).await.unwrap();
    assert_eq!(chain[2], bundle, "response carries the rotated bundle");
    let (verified, output) = openssl_verify(&dir, &new_root, &chain[1], &chain[0]);
    assert!(verified, "leaf chains to the new root: {output}");
    let (verified, _) = openssl_verify(&dir, &old_root, &chain[1], &chain[0]);
    assert!(!verified, "leaf no longer chains to the old root");

    let mut fresh = connect(&ca).await;
    create(&mut fresh, Some(&token), &csr, 0)
        .await
        .expect("a client trusting the rotated bundle connects");
}
