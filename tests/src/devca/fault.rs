//! Fault specifications that make the development CA misbehave on purpose.
//!
//! A specification is a list of items separated by commas (newlines are
//! accepted too, so a fault file may hold one item per line). An empty
//! specification and the item `none` mean "no fault". In a fault file,
//! `none` also overrides the faults given with `--fault`.

use std::fmt;
use std::num::ParseIntError;
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

/// The fault items that [`FaultSpec::from_str`] accepts, as shown in error
/// messages.
pub const ACCEPTED_ITEMS: &str = "none, leaf-other-key, other-san, short-chain, expired-leaf, \
     not-yet-valid=DURATION, garbage-pem, broken-chain, reverse-chain, huge=BYTES, stall, \
     delay=DURATION, unavailable-first=N, internal-first=N, unavailable, internal, \
     ttl=DURATION, intermediate-expires=DURATION";

/// Maximum size of the junk element that `huge=BYTES` adds, so that a typo
/// cannot make the CA allocate gigabytes.
pub const MAX_HUGE_BYTES: usize = 256 * 1024 * 1024;

/// The gRPC status that a status fault returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCode {
    /// `UNAVAILABLE`, which clients are expected to retry.
    Unavailable,
    /// `INTERNAL`.
    Internal,
}

impl FailureCode {
    /// Returns the matching tonic status code.
    pub fn code(self) -> tonic::Code {
        match self {
            Self::Unavailable => tonic::Code::Unavailable,
            Self::Internal => tonic::Code::Internal,
        }
    }
}

/// A fault that returns an error status in place of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusFault {
    /// The status returned.
    pub code: FailureCode,
    /// Number of calls, counted from the start of the server process, that
    /// get the error. `None` means every call.
    pub first_calls: Option<u64>,
}

/// A parsed fault specification. The default value is "no fault".
///
/// When an item that takes a value appears twice, the later one applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultSpec {
    /// `leaf-other-key`: certify a fresh unrelated key instead of the CSR key.
    pub leaf_other_key: bool,
    /// `other-san`: put `spiffe://<trust-domain>/ns/other/sa/other` in the leaf.
    pub other_san: bool,
    /// `short-chain`: return the leaf alone.
    pub short_chain: bool,
    /// `expired-leaf`: leaf valid from two hours ago until one hour ago.
    pub expired_leaf: bool,
    /// `not-yet-valid=DURATION`: leaf validity starts this far in the future.
    pub not_yet_valid: Option<Duration>,
    /// `garbage-pem`: the leaf element is a PEM block with invalid base64.
    pub garbage_pem: bool,
    /// `broken-chain`: leaf signed by an unrelated key under the
    /// intermediate's name.
    pub broken_chain: bool,
    /// `reverse-chain`: return `[root, intermediate, leaf]`.
    pub reverse_chain: bool,
    /// `huge=BYTES`: append a junk element of this many bytes.
    pub huge: Option<usize>,
    /// `stall`: never respond.
    pub stall: bool,
    /// `delay=DURATION`: wait this long, then respond normally.
    pub delay: Option<Duration>,
    /// `unavailable`, `internal`, `unavailable-first=N` and
    /// `internal-first=N`, in the order given. The first one that covers
    /// the current call applies.
    pub status_faults: Vec<StatusFault>,
    /// `ttl=DURATION`: leaf lifetime, overriding the request and the cap.
    pub ttl: Option<Duration>,
    /// `intermediate-expires=DURATION`: sign the leaf with a fresh
    /// intermediate that expires this far in the future.
    pub intermediate_expires: Option<Duration>,
}

/// An invalid fault specification.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FaultSpecError {
    /// The item name is not one of [`ACCEPTED_ITEMS`].
    #[error("unknown fault item `{item}`; accepted items: {ACCEPTED_ITEMS}")]
    UnknownItem {
        /// The item as written.
        item: String,
    },
    /// An item that needs a value was written without one.
    #[error("fault item `{item}` needs a value, as in `{item}={example}`")]
    MissingValue {
        /// The item as written.
        item: String,
        /// An example value.
        example: &'static str,
    },
    /// An item that takes no value was written with one.
    #[error("fault item `{item}` takes no value; write `{name}` alone")]
    UnexpectedValue {
        /// The item as written.
        item: String,
        /// The item name without the value.
        name: String,
    },
    /// A duration value is not a humantime duration.
    #[error(
        "invalid duration `{value}` in fault item `{item}`: {message}; \
         use a duration such as `30s`, `5m` or `1h`"
    )]
    InvalidDuration {
        /// The item as written.
        item: String,
        /// The value as written.
        value: String,
        /// The parser's message.
        message: String,
    },
    /// A count or size is not a non-negative integer.
    #[error(
        "invalid number `{value}` in fault item `{item}`: {source}; use a non-negative integer"
    )]
    InvalidNumber {
        /// The item as written.
        item: String,
        /// The value as written.
        value: String,
        /// The parser's error.
        source: ParseIntError,
    },
    /// `huge=BYTES` exceeds [`MAX_HUGE_BYTES`].
    #[error("`huge={bytes}` exceeds the maximum of {MAX_HUGE_BYTES} bytes; use a smaller size")]
    HugeTooLarge {
        /// The requested size.
        bytes: usize,
    },
}

impl FaultSpec {
    /// Returns true if the specification contains no fault.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Returns the status fault that applies to the call with this 0-based
    /// index, if any.
    pub fn status_for_call(&self, call_index: u64) -> Option<FailureCode> {
        self.status_faults
            .iter()
            .find(|fault| match fault.first_calls {
                None => true,
                Some(first_calls) => call_index < first_calls,
            })
            .map(|fault| fault.code)
    }
}

impl FromStr for FaultSpec {
    type Err = FaultSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let mut faults = Self::default();
        let items = spec
            .split([',', '\n'])
            .map(str::trim)
            .filter(|item| !item.is_empty());
        for item in items {
            faults.apply_item(item)?;
        }
        Ok(faults)
    }
}

/// Writes the specification in canonical form, for example
/// `short-chain,delay=1s`, or `none` when it is empty.
impl fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let duration = |d: &Duration| humantime::format_duration(*d).to_string();
        let flags = [
            (self.leaf_other_key, "leaf-other-key"),
            (self.other_san, "other-san"),
            (self.short_chain, "short-chain"),
            (self.expired_leaf, "expired-leaf"),
            (self.garbage_pem, "garbage-pem"),
            (self.broken_chain, "broken-chain"),
            (self.reverse_chain, "reverse-chain"),
            (self.stall, "stall"),
        ];
        let mut items: Vec<String> = flags
            .iter()
            .filter(|(set, _)| *set)
            .map(|(_, name)| (*name).to_owned())
            .collect();
        let valued = [
            ("not-yet-valid", self.not_yet_valid.as_ref().map(duration)),
            ("delay", self.delay.as_ref().map(duration)),
            ("ttl", self.ttl.as_ref().map(duration)),
            (
                "intermediate-expires",
                self.intermediate_expires.as_ref().map(duration),
            ),
            ("huge", self.huge.map(|bytes| bytes.to_string())),
        ];
        for (name, value) in valued {
            if let Some(value) = value {
                items.push(format!("{name}={value}"));
            }
        }
        for fault in &self.status_faults {
            let name = match fault.code {
                FailureCode::Unavailable => "unavailable",
                FailureCode::Internal => "internal",
            };
            items.push(match fault.first_calls {
                Some(count) => format!("{name}-first={count}"),
                None => name.to_owned(),
            });
        }
        if items.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&items.join(","))
        }
    }
}

impl FaultSpec {
    fn apply_item(&mut self, item: &str) -> Result<(), FaultSpecError> {
        let (name, value) = match item.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim())),
            None => (item, None),
        };
        let flag = |field: &mut bool| -> Result<(), FaultSpecError> {
            if value.is_some() {
                return Err(FaultSpecError::UnexpectedValue {
                    item: item.to_owned(),
                    name: name.to_owned(),
                });
            }
            *field = true;
            Ok(())
        };
        match name {
            "none" => {
                let mut unused = false;
                flag(&mut unused)?;
            }
            "leaf-other-key" => flag(&mut self.leaf_other_key)?,
            "other-san" => flag(&mut self.other_san)?,
            "short-chain" => flag(&mut self.short_chain)?,
            "expired-leaf" => flag(&mut self.expired_leaf)?,
            "garbage-pem" => flag(&mut self.garbage_pem)?,
            "broken-chain" => flag(&mut self.broken_chain)?,
            "reverse-chain" => flag(&mut self.reverse_chain)?,
            "stall" => flag(&mut self.stall)?,
            "unavailable" | "internal" => {
                let mut unused = false;
                flag(&mut unused)?;
                self.status_faults.push(StatusFault {
                    code: failure_code(name),
                    first_calls: None,
                });
            }
            "unavailable-first" | "internal-first" => {
                let first_calls = parse_number(item, value, "2")?;
                self.status_faults.push(StatusFault {
                    code: failure_code(name),
                    first_calls: Some(first_calls),
                });
            }
            "huge" => {
                let bytes = parse_number(item, value, "8388608")?;
                let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
                if bytes > MAX_HUGE_BYTES {
                    return Err(FaultSpecError::HugeTooLarge { bytes });
                }
                self.huge = Some(bytes);
            }
            "not-yet-valid" => self.not_yet_valid = Some(parse_duration(item, value)?),
            "delay" => self.delay = Some(parse_duration(item, value)?),
            "ttl" => self.ttl = Some(parse_duration(item, value)?),
            "intermediate-expires" => {
                self.intermediate_expires = Some(parse_duration(item, value)?);
            }
            _ => {
                return Err(FaultSpecError::UnknownItem {
                    item: item.to_owned(),
                })
            }
        }
        Ok(())
    }
}

fn failure_code(name: &str) -> FailureCode {
    if name.starts_with("unavailable") {
        FailureCode::Unavailable
    } else {
        FailureCode::Internal
    }
}

fn parse_number(
    item: &str,
    value: Option<&str>,
    example: &'static str,
) -> Result<u64, FaultSpecError> {
    let value = value.ok_or_else(|| FaultSpecError::MissingValue {
        item: item.to_owned(),
        example,
    })?;
    value
        .parse()
        .map_err(|source| FaultSpecError::InvalidNumber {
            item: item.to_owned(),
            value: value.to_owned(),
            source,
        })
}

fn parse_duration(item: &str, value: Option<&str>) -> Result<Duration, FaultSpecError> {
    let value = value.ok_or_else(|| FaultSpecError::MissingValue {
        item: item.to_owned(),
        example: "30s",
    })?;
    humantime::parse_duration(value).map_err(|error| FaultSpecError::InvalidDuration {
        item: item.to_owned(),
        value: value.to_owned(),
        message: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> FaultSpec {
        spec.parse()
            .unwrap_or_else(|error| panic!("`{spec}` should parse: {error}"))
    }

    #[test]
    fn empty_spec_has_no_fault() {
        assert!(parse("").is_empty());
        assert!(parse("  \n , ").is_empty());
        assert!(parse("none").is_empty());
    }

    #[test]
    fn flags_parse() {
        let spec = parse(
            "leaf-other-key,other-san,short-chain,expired-leaf,garbage-pem,\
             broken-chain,reverse-chain,stall",
        );
        assert!(spec.leaf_other_key);
        assert!(spec.other_san);
        assert!(spec.short_chain);
        assert!(spec.expired_leaf);
        assert!(spec.garbage_pem);
        assert!(spec.broken_chain);
        assert!(spec.reverse_chain);
        assert!(spec.stall);
        assert!(spec.status_faults.is_empty());
    }

    #[test]
    fn valued_items_parse() {
        let spec = parse(
            " not-yet-valid=30s , delay = 250ms,huge=8388608,ttl=2m,\nintermediate-expires=1h",
        );
        assert_eq!(spec.not_yet_valid, Some(Duration::from_secs(30)));
        assert_eq!(spec.delay, Some(Duration::from_millis(250)));
        assert_eq!(spec.huge, Some(8_388_608));
        assert_eq!(spec.ttl, Some(Duration::from_secs(120)));
        assert_eq!(spec.intermediate_expires, Some(Duration::from_secs(3600)));
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "none",
            "short-chain,stall",
            "not-yet-valid=30s,delay=250ms,ttl=1h,intermediate-expires=2m,huge=10",
            "other-san,unavailable-first=2,internal",
        ] {
            let spec = parse(text);
            assert_eq!(spec.to_string(), text);
            assert_eq!(parse(&spec.to_string()), spec);
        }
    }

    #[test]
    fn later_value_wins() {
        assert_eq!(
            parse("delay=1s,delay=2s").delay,
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn status_faults_apply_in_order() {
        let spec = parse("unavailable-first=2,internal-first=3");
        assert_eq!(spec.status_for_call(0), Some(FailureCode::Unavailable));
        assert_eq!(spec.status_for_call(1), Some(FailureCode::Unavailable));
        assert_eq!(spec.status_for_call(2), Some(FailureCode::Internal));
        assert_eq!(spec.status_for_call(3), None);
    }

    #[test]
    fn permanent_status_faults() {
        assert_eq!(
            parse("unavailable").status_for_call(1_000),
            Some(FailureCode::Unavailable)
        );
        assert_eq!(
            parse("internal").status_for_call(0),
            Some(FailureCode::Internal)
        );
        assert_eq!(parse("internal-first=0").status_for_call(0), None);
    }

    #[test]
    fn unknown_item_names_item_and_list() {
        let error = "short-chain,bogus=1".parse::<FaultSpec>().unwrap_err();
        assert_eq!(
            error,
            FaultSpecError::UnknownItem {
                item: "bogus=1".to_owned()
            }
        );
        let message = error.to_string();
        assert!(message.contains("`bogus=1`"), "{message}");
        assert!(message.contains(ACCEPTED_ITEMS), "{message}");
    }

    #[test]
    fn missing_value_rejected() {
        let error = "delay".parse::<FaultSpec>().unwrap_err();
        assert!(matches!(error, FaultSpecError::MissingValue { .. }));
        assert!(error.to_string().contains("`delay=30s`"), "{error}");
        let error = "huge".parse::<FaultSpec>().unwrap_err();
        assert!(matches!(error, FaultSpecError::MissingValue { .. }));
    }

    #[test]
    fn unexpected_value_rejected() {
        let error = "stall=5s".parse::<FaultSpec>().unwrap_err();
        assert!(matches!(error, FaultSpecError::UnexpectedValue { .. }));
        let error = "internal=1".parse::<FaultSpec>().unwrap_err();
        assert!(matches!(error, FaultSpecError::UnexpectedValue { .. }));
    }

    #[test]
    fn invalid_values_rejected() {
        let error = "delay=soon".parse::<FaultSpec>().unwrap_err();
        assert!(matches!(error, FaultSpecError::InvalidDuration { .. }));
        assert!(error.to_string().contains("`soon`"), "{error}");
        let error = "unavailable-first=-1".parse::<FaultSpec>().unwrap_err();
        assert!(matches!(error, FaultSpecError::InvalidNumber { .. }));
        let error = "huge=999999999999".parse::<FaultSpec>().unwrap_err();
        assert!(matches!(error, FaultSpecError::HugeTooLarge { .. }));
    }
}
