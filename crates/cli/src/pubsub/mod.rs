//! `sagitta pub` and `sagitta sub`: command-line publish and subscribe on `sagitta-client`,
//! with the flags and output of `mosquitto_pub` / `mosquitto_sub`.
//!
//! Layout:
//! - `common.rs`: the connection flags both share (`-h -p -L -i -I -u -P -k -V -c -x`, the
//!   will, `-D`, `--quiet`, and the TLS flags of `crate::tls`), turned into a
//!   `ClientBuilder`; the exit codes and error type.
//! - `props.rs`: `-D command property value` (MQTT 5.0 properties).
//! - `publish.rs`: `PubArgs`, `run_pub`.
//! - `subscribe.rs`: `SubArgs`, `run_sub`.
//! - `format.rs`: the `-F` output format of `sagitta sub` (and `-v` / the default output).
//!
//! Exit codes, the same for both: 0 success; 1 connection, protocol or publish failure (the
//! broker's reason is printed); 2 bad arguments; 27 `sagitta sub -W` timed out.

mod common;
mod format;
mod props;
mod publish;
mod subscribe;

pub use publish::{PubArgs, run_pub};
pub use subscribe::{SubArgs, run_sub};
