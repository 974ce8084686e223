//! `fvd-img`: the qemu-img-style image tool. Everything lives in [`fvd_host::cli`].

fn main() -> std::process::ExitCode {
    fvd_host::cli::main()
}
