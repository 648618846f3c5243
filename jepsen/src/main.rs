//! `norn-jepsen`: not built yet; it says so instead of pretending.

fn main() {
    eprintln!("norn-jepsen: the chaos harness is not implemented yet");
    std::process::exit(2);
}
