//! `meshcert-refresher probe`: the exec-probe form of `GET /ready`.

use std::process::ExitCode;
use std::time::SystemTime;

use meshcert_common::bundle::rfc3339;
use meshcert_common::certdir::CertDir;
use meshcert_common::identity;
use meshcert_common::issue;
use meshcert_common::settings::CaSettings;

/// Exits 0 when a complete, valid, unexpired set for our identity is
/// published in `--out-dir`, else 1 with the reason on stderr.
pub(crate) fn run(settings: &CaSettings) -> ExitCode {
    match check(settings) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("not ready: {reason}");
            ExitCode::from(1)
        }
    }
}

fn check(settings: &CaSettings) -> Result<String, String> {
    let spiffe_id = identity::resolve_identity(
        &settings.trust_domain,
        settings.namespace.as_deref(),
        settings.service_account.as_deref(),
        &settings.token_file,
    )
    .map_err(|e| e.to_string())?;
    let dir = CertDir::new(&settings.out_dir, settings.group);
    let (_key, set) =
        issue::read_published(&dir, &spiffe_id, SystemTime::now()).map_err(|e| e.to_string())?;
    Ok(format!(
        "ready: {spiffe_id} serial {} expires at {}",
        set.serial,
        rfc3339(set.expires_at)
    ))
}
