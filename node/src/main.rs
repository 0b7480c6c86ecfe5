//! The node agent: PID 1 of the node initramfs Stampede builds for a diskless root.
fn main() {}
