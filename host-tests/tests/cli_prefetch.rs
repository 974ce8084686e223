//! `fvd-img prefetch`: after it, the image reads the same without its base.

use std::process::Command;

fn fvd_img(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fvd-img"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn prefetch_makes_the_base_unnecessary() {
    let dir = tempfile::tempdir().unwrap();
    let base: Vec<u8> = (0..(3u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("base.raw"), &base).unwrap();
    for (name, opts) in [
        ("plain.fvd", "block_size=65536"),
        ("compact.fvd", "compact_image=on,block_size=65536"),
    ] {
        let out = fvd_img(
            &[
                "create", "-q", "-f", "fvd", "-b", "base.raw", "-F", "raw", "-o", opts, name,
            ],
            dir.path(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = fvd_img(&["io", "-c", "write -P 0x5a 1M 64k", name], dir.path());
        assert!(out.status.success());
        let out = fvd_img(&["prefetch", "-r", "64M", name], dir.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("no longer needs its base"));
        let out = fvd_img(&["prefetch", name], dir.path());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "Image is already fully prefetched."
        );
    }
    // Without the base, both images read as base + the write.
    let mut expected = base.clone();
    expected[1 << 20..(1 << 20) + 65536].fill(0x5a);
    std::fs::write(dir.path().join("expected.raw"), &expected).unwrap();
    std::fs::remove_file(dir.path().join("base.raw")).unwrap();
    for name in ["plain.fvd", "compact.fvd"] {
        let out = fvd_img(&["compare", "-F", "raw", name, "expected.raw"], dir.path());
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn prefetch_refuses_images_without_a_base_and_bad_rates() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        fvd_img(&["create", "-q", "-f", "fvd", "x.fvd", "1M"], dir.path())
            .status
            .success()
    );
    let out = fvd_img(&["prefetch", "x.fvd"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no base image"));
    let out = fvd_img(&["prefetch", "-r", "abc", "x.fvd"], dir.path());
    assert_eq!(out.status.code(), Some(1));
}
