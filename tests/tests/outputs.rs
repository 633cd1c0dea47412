//! End-to-end tests of the extra output files (PKCS#12 keystore, one-file
//! bundle) and of the `status` report, checked with openssl and Java's keytool.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

use meshcert_tests::{bin_path, DevCa, DevCaOptions, TokenOptions};
use tempfile::TempDir;

struct Setup {
    ca: DevCa,
    dir: TempDir,
}

impl Setup {
    fn start() -> Self {
        let ca = DevCa::start(DevCaOptions::default()).expect("start the dev CA");
        let dir = tempfile::tempdir().unwrap();
        ca.write_token(
            &dir.path().join("token"),
            "shop",
            "java-app",
            &TokenOptions::default(),
        )
        .unwrap();
        fs::write(dir.path().join("password"), "s3cret-pass\n").unwrap();
        Self { ca, dir }
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join("certs").join(name)
    }

    fn path(&self, name: &str) -> String {
        self.out(name).to_str().unwrap().to_string()
    }

    fn init(&self, extra: &[&str]) -> Output {
        let output = Command::new(bin_path("meshcert-init"))
            .env_clear()
            .arg("--ca-addr")
            .arg(self.ca.addr().to_string())
            .arg("--ca-root")
            .arg(self.ca.root_pem_path())
            .arg("--token-file")
            .arg(self.dir.path().join("token"))
            .arg("--out-dir")
            .arg(self.dir.path().join("certs"))
            .args(extra)
            .output()
            .unwrap();
        output
    }

    fn password_file(&self) -> String {
        self.dir
            .path()
            .join("password")
            .to_str()
            .unwrap()
            .to_string()
    }
}

fn tool(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn public_key_of_key(path: &str) -> String {
    tool("openssl", &["pkey", "-in", path, "-pubout"])
}

fn public_key_of_leaf(path: &str) -> String {
    tool("openssl", &["x509", "-in", path, "-noout", "-pubkey"])
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn pkcs12_to_pem(setup: &Setup, extra: &[&str]) -> PathBuf {
    let pem = setup.dir.path().join("from-p12.pem");
    let mut args = vec![
        "pkcs12".to_string(),
        "-in".to_string(),
        setup.path("keystore.p12"),
        "-passin".to_string(),
        format!("file:{}", setup.password_file()),
        "-nodes".to_string(),
        "-out".to_string(),
        pem.to_str().unwrap().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tool("openssl", &args);
    pem
}

#[test]
fn pkcs12_readable_by_openssl_and_keytool() {
    let setup = Setup::start();
    let password = format!("--pkcs12-password-file={}", setup.password_file());
    let output = setup.init(&["--pkcs12", "keystore.p12", &password]);
    assert!(output.status.success(), "{}", stderr(&output));

    let pem = pkcs12_to_pem(&setup, &[]);
    let pem = pem.to_str().unwrap();
    assert_eq!(
        public_key_of_key(pem),
        public_key_of_key(&setup.path("key.pem")),
        "the keystore's key is key.pem"
    );
    let passin = format!("file:{}", setup.password_file());
    let keystore = setup.path("keystore.p12");
    let info = Command::new("openssl")
        .args([
            "pkcs12", "-in", &keystore, "-passin", &passin, "-info", "-noout",
        ])
        .output()
        .unwrap();
    assert!(info.status.success(), "openssl pkcs12 -info");
    let info =
        String::from_utf8_lossy(&info.stderr).into_owned() + &String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("AES-256-CBC"), "modern encryption: {info}");
    assert!(info.contains("sha256"), "SHA-256 MAC: {info}");

    let listing = tool(
        "keytool",
        &[
            "-list",
            "-v",
            "-storetype",
            "PKCS12",
            "-keystore",
            &setup.path("keystore.p12"),
            "-storepass",
            "s3cret-pass",
        ],
    );
    assert!(listing.contains("PrivateKeyEntry"), "key entry: {listing}");
    assert!(
        listing.contains("spiffe://cluster.local/ns/shop/sa/java-app"),
        "leaf in chain: {listing}"
    );

    let mode = fs::metadata(setup.out("keystore.p12")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(mode.mode() & 0o777, 0o600, "keystore mode is the key's");
}

#[test]
fn pkcs12_legacy_and_empty_password() {
    let setup = Setup::start();
    let output = setup.init(&[
        "--pkcs12",
        "keystore.p12",
        "--pkcs12-empty-password",
        "--pkcs12-legacy",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let info = Command::new("openssl")
        .args([
            "pkcs12",
            "-in",
            &setup.path("keystore.p12"),
            "-passin",
            "pass:",
            "-info",
            "-noout",
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&info.stderr).into_owned() + &String::from_utf8_lossy(&info.stdout);
    assert!(info.status.success(), "openssl reads it: {text}");
    assert!(text.contains("TripleDES"), "legacy encryption: {text}");
    assert!(text.contains("sha1"), "SHA-1 MAC: {text}");
}

#[test]
fn pkcs12_without_password_choice_exits_2() {
    let setup = Setup::start();
    let output = setup.init(&["--pkcs12", "keystore.p12"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--pkcs12-password-file"),
        "{}",
        stderr(&output)
    );
    assert!(!setup.out("keystore.p12").exists(), "nothing written");
}

#[test]
fn output_name_collision_exits_2() {
    let setup = Setup::start();
    let output = setup.init(&["--bundle-file", "key.pem"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--bundle-file"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bundle_file_holds_key_then_chain() {
    let setup = Setup::start();
    let output = setup.init(&["--bundle-file", "tls.pem"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let bundle = setup.path("tls.pem");
    let text = fs::read_to_string(&bundle).unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "key first");
    assert_eq!(
        text.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf and intermediate"
    );
    assert_eq!(
        public_key_of_key(&bundle),
        public_key_of_leaf(&bundle),
        "key matches the leaf"
    );
    let verify = tool(
        "openssl",
        &[
            "verify",
            "-CAfile",
            &setup.path("root-cert.pem"),
            "-untrusted",
            &bundle,
            &bundle,
        ],
    );
    assert!(verify.contains("OK"), "{verify}");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(&bundle).unwrap().mode() & 0o777,
        0o600,
        "bundle mode is the key's"
    );
}

#[test]
fn status_json_matches_openssl() {
    let setup = Setup::start();
    let output = setup.init(&[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let status = Command::new(bin_path("meshcert-init"))
        .args(["status", "--json", "--out-dir"])
        .arg(setup.dir.path().join("certs"))
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "status exits 0 for a valid set: {}",
        stderr(&status)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&status.stdout).expect("status --json parses");

    let chain = setup.path("cert-chain.pem");
    let serial = tool("openssl", &["x509", "-in", &chain, "-noout", "-serial"]);
    let serial = serial.trim().trim_start_matches("serial=").to_lowercase();
    assert_eq!(
        json["serial"]
            .as_str()
            .map(|s| s.trim_start_matches('0').to_string()),
        Some(serial.trim_start_matches('0').to_string()),
        "serial"
    );
    assert_eq!(json["valid"], serde_json::Value::Bool(true), "valid");
    assert_eq!(
        json["spiffe_id"], "spiffe://cluster.local/ns/shop/sa/java-app",
        "identity"
    );
    assert_eq!(json["key_type"], "ecdsa-p256", "key type");

    let end = tool(
        "openssl",
        &[
            "x509", "-in", &chain, "-noout", "-enddate", "-dateopt", "iso_8601",
        ],
    );
    let end = end.trim().trim_start_matches("notAfter=").replace(' ', "T");
    assert_eq!(json["not_after"].as_str(), Some(end.as_str()), "notAfter");
    let start = tool(
        "openssl",
        &[
            "x509",
            "-in",
            &chain,
            "-noout",
            "-startdate",
            "-dateopt",
            "iso_8601",
        ],
    );
    let start = start
        .trim()
        .trim_start_matches("notBefore=")
        .replace(' ', "T");
    assert_eq!(
        json["not_before"].as_str(),
        Some(start.as_str()),
        "notBefore"
    );
    assert_eq!(
        json["chain"].as_array().map(Vec::len),
        Some(2),
        "chain length"
    );
    assert_eq!(json["roots"].as_array().map(Vec::len), Some(1), "roots");
    let files = json["files"].as_array().unwrap();
    let key = files
        .iter()
        .find(|f| f["name"] == "key.pem")
        .expect("key.pem listed");
    assert_eq!(key["mode"], "0600", "key mode");
    assert!(
        json["seconds_until_renewal"].as_i64().unwrap() > 0,
        "renewal ahead"
    );
}

#[test]
fn status_reports_missing_set() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(bin_path("meshcert-init"))
        .args(["status", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "exit 1 when nothing is published"
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("NOT VALID"), "{text}");
}
