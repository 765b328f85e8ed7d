//! The `sagitta` command-line tool (under construction).
fn main() {}
