//! Helpers shared by the CLI tests: subprocesses killed when dropped, and free ports.

// Test helpers: a failed expectation aborts the test, which is what unwrap/expect do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Output};

/// A subprocess killed when dropped.
pub struct Running(Option<Child>);

impl Running {
    /// Owns `child` from now on.
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// The process.
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the process is still owned")
    }

    /// Waits for the process to exit by itself and collects its output.
    pub fn output(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
