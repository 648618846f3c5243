//! `norn-sim`: runs simulation seeds. Not built yet; it says so instead of pretending.

fn main() {
    eprintln!("norn-sim: the deterministic simulator is not implemented yet (see the simulation issue)");
    std::process::exit(2);
}
