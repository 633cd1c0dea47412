//! Test support for meshcert.
