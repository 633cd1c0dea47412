//! Input decoding shared by the fuzz targets.
//!
//! A `validate_answer` input is one flag byte followed by the CA answer's
//! elements as UTF-8 text separated by NUL bytes. PEM text never contains
//! NUL, so a seed made of real PEM files joined by NUL reaches the deep
//! parts of the validation at once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::prelude::FromDer;

/// The identity every fuzzed leaf is checked against; seed leaves carry it.
pub const SPIFFE_ID: (&str, &str, &str) = ("cluster.local", "fuzz", "fuzz");

/// Maximum clock skew used when flag bit 3 is set.
pub const SKEW: Duration = Duration::from_secs(300);

/// One decoded `validate_answer` input.
#[derive(Debug)]
pub struct AnswerInput {
    /// The `cert_chain` elements.
    pub elements: Vec<String>,
    /// Whether the expected key is taken from the first leaf of the input,
    /// so the key check passes and the later checks run.
    pub key_from_input: bool,
    /// The validation time.
    pub now: SystemTime,
    /// The allowed notBefore lead.
    pub max_clock_skew: Duration,
}

/// Splits a raw fuzz input; returns `None` for an empty or non-UTF-8 input.
pub fn decode_answer(data: &[u8]) -> Option<AnswerInput> {
    let (&flags, rest) = data.split_first()?;
    let text = std::str::from_utf8(rest).ok()?;
    let elements = text.split('\0').map(str::to_string).collect();
    // Bits 1-2 pick the clock: now, the Unix epoch, year 2100, or year 9999,
    // so the expired and not-yet-valid branches are reachable with any seed.
    let now = match (flags >> 1) & 0b11 {
        0 => SystemTime::now(),
        1 => UNIX_EPOCH,
        2 => UNIX_EPOCH + Duration::from_secs(4_102_444_800),
        _ => UNIX_EPOCH + Duration::from_secs(253_402_300_799),
    };
    Some(AnswerInput {
        elements,
        key_from_input: flags & 1 == 1,
        now,
        max_clock_skew: if flags & 0b1000 != 0 {
            SKEW
        } else {
            Duration::ZERO
        },
    })
}

/// Returns the SubjectPublicKeyInfo of the first certificate in `elements`
/// that is not a CA, or an empty vector when there is none.
pub fn first_leaf_spki(elements: &[String]) -> Vec<u8> {
    for element in elements {
        let Ok(ders) = meshcert_common::bundle::pem_certificates(element, 0) else {
            continue;
        };
        for der in ders {
            let Ok((_, certificate)) = x509_parser::certificate::X509Certificate::from_der(&der)
            else {
                continue;
            };
            if !certificate.is_ca() {
                return certificate.public_key().raw.to_vec();
            }
        }
    }
    Vec::new()
}
