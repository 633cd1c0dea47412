//! Test support for meshcert: the `meshcert-devca` development CA and a
//! harness that runs the workspace binaries in end-to-end tests.

pub mod atomic_file;
pub mod devca;
pub mod harness;
pub mod reliability;

pub use harness::{bin_path, DevCa, DevCaOptions, TokenOptions};
