//! The `wsfleet` command.
fn main() {}
