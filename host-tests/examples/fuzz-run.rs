//! Runs inputs through a fuzz target on stable, with ordinary panics and backtraces:
//! `cargo run -p fvd-host --example fuzz-run -- TARGET FILE...` (for example a crash that
//! `cargo fuzz` saved in fuzz/artifacts/).

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(target) = args.next() else {
        eprintln!(
            "usage: fuzz-run TARGET FILE...   (targets: {})",
            fvd_host::testing::fuzz::TARGETS.join(", ")
        );
        std::process::exit(2);
    };
    for file in args {
        let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        eprintln!("{target} {file} ({} bytes)", data.len());
        fvd_host::testing::fuzz::run(&target, &data);
    }
}
