//! The firmware's self-test (mount a FAT volume through the overlay, write, cut, remount,
//! reset) run on the host over a FAT16 factory image made by `mkfs.fat` and `mcopy`
//! (dosfstools, mtools), the same cases the QEMU firmware runs.

use fvd_firmware::medium::Extent;
use fvd_firmware::ram::RamMedium;
use fvd_firmware::selftest::{Bench, KnownFile};
use fvd_firmware::Layout;
use std::process::Command;

const BASE_BYTES: u64 = 2560 << 10;
const HELLO: &[u8] = b"hello from the factory image\n";

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program} (dosfstools/mtools) is needed: {e}"));
    assert!(status.success(), "{program} {args:?} failed");
}

/// A FAT16 volume with a fake MBR (embedded-sdmmc mounts partition 0) holding HELLO.TXT.
fn factory_image(dir: &std::path::Path) -> Vec<u8> {
    let image = dir.join("base.img");
    let hello = dir.join("HELLO.TXT");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(BASE_BYTES)
        .unwrap();
    std::fs::write(&hello, HELLO).unwrap();
    let image = image.to_str().unwrap();
    run(
        "mkfs.fat",
        &["-F", "16", "-s", "1", "--mbr=y", "-n", "FVDBASE", image],
    );
    run(
        "mcopy",
        &["-i", image, hello.to_str().unwrap(), "::HELLO.TXT"],
    );
    std::fs::read(image).unwrap()
}

#[test]
fn the_self_test_passes_on_a_fat16_factory_image() {
    let dir = std::env::temp_dir().join(format!("fvd-fw-selftest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rom = factory_image(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let base_blocks = (rom.len() / 512) as u32;
    let overlay_blocks = base_blocks + 1024;
    let mut ram = vec![0u8; overlay_blocks as usize * 512];
    let medium = RamMedium::<64>::with_rom(&rom, &mut ram);
    let mut memory = vec![0u8; 96 << 10];
    let mut check_memory = vec![0u8; 64 << 10];
    let mut bench = Bench {
        medium: &medium,
        layout: Layout {
            base: Extent {
                first: 0,
                blocks: base_blocks,
            },
            overlay: Extent {
                first: base_blocks,
                blocks: overlay_blocks,
            },
        },
        known: KnownFile {
            name: "HELLO.TXT",
            content: HELLO,
        },
        memory: &mut memory,
        cache_bytes: 16 << 10,
        check_memory: &mut check_memory,
    };
    let seed = std::env::var("FVD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("selftest seed {seed} (FVD_SEED={seed} replays it)");
    let mut failures = Vec::new();
    let tally = bench.run(seed, |name, result| {
        println!("{name}: {result:?}");
        if let Err(why) = result {
            failures.push((name, why));
        }
    });
    assert!(failures.is_empty(), "seed {seed}: {failures:?}");
    assert_eq!(tally.passed, 6);
}
