//! The firmware's self-test (mount a FAT volume through the overlay, write, cut, remount,
//! reset) run on the host over a FAT16 factory image made by `mkfs.fat` and `mcopy`
//! (dosfstools, mtools), the same cases the QEMU firmware runs.

mod common;

use common::factory_fat16;
use fvd_firmware::medium::Extent;
use fvd_firmware::ram::RamMedium;
use fvd_firmware::selftest::{Bench, KnownFile};
use fvd_firmware::Layout;

const HELLO: &[u8] = b"hello from the factory image\n";

#[test]
fn the_self_test_passes_on_a_fat16_factory_image() {
    let dir = std::env::temp_dir().join(format!("fvd-fw-selftest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rom = factory_fat16(&dir.join("base.img"), &[("HELLO.TXT", HELLO)]);
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
