use std::env;

/// Rebuild when bpf-linker changes (a new nightly needs a relinked object).
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let _ = env::var("CARGO_CFG_BPF_TARGET_ARCH");
}
