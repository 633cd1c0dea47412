//! Fuzzes the PEM splitting of one CA answer element.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcert_common::bundle::pem_certificates;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ders) = pem_certificates(text, 3) {
        assert!(!ders.is_empty(), "Ok with no certificate");
        let total: usize = ders.iter().map(Vec::len).sum();
        assert!(total <= text.len(), "decoded more bytes than the input has");
    }
});
