//! The overlay the driver writes is an FVD image like any other: saved as `disk.fvd` beside
//! the factory image `base.img`, `fvd-img check` finds it clean, `fvd-img convert -O raw`
//! flattens it, and `fsck.fat -n` and `mtype` (dosfstools, mtools) read the FAT volume with
//! the file written through the overlay.

use embedded_sdmmc::{Mode, TimeSource, Timestamp, VolumeIdx, VolumeManager};
use fvd_firmware::medium::Extent;
use fvd_firmware::ram::RamMedium;
use fvd_firmware::{Geometry, Layout, OverlayDisk};
use std::path::Path;
use std::process::Command;

const BASE_BYTES: u64 = 2560 << 10;
const NEW: &[u8] = b"written by the firmware driver through its FVD overlay\n";

fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} (dosfstools/mtools) is needed: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn fvd_img(args: &[&str]) -> String {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let argv = std::iter::once("fvd-img").chain(args.iter().copied());
    let code = fvd_host::cli::run_with(argv, &mut out, &mut err);
    let text = String::from_utf8_lossy(&out).into_owned() + &String::from_utf8_lossy(&err);
    assert_eq!(code, 0, "fvd-img {args:?}: {text}");
    text
}

struct Clock;

impl TimeSource for Clock {
    fn get_timestamp(&self) -> Timestamp {
        Timestamp::from_calendar(2026, 12, 4, 12, 0, 0).unwrap()
    }
}

fn factory_image(dir: &Path) -> Vec<u8> {
    let image = dir.join("base.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(BASE_BYTES)
        .unwrap();
    let image = image.to_str().unwrap();
    run(
        "mkfs.fat",
        &["-F", "16", "-s", "1", "--mbr=y", "-n", "FVDBASE", image],
    );
    std::fs::read(image).unwrap()
}

#[test]
fn the_overlay_the_driver_writes_is_an_image_fvd_img_checks_and_converts_to_a_clean_fat() {
    let dir = std::env::temp_dir().join(format!("fvd-fw-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rom = factory_image(&dir);
    let base_blocks = (rom.len() / 512) as u32;
    let overlay_blocks = base_blocks + 512;
    let layout = Layout {
        base: Extent {
            first: 0,
            blocks: base_blocks,
        },
        overlay: Extent {
            first: base_blocks,
            blocks: overlay_blocks,
        },
    };
    let mut ram = vec![0u8; overlay_blocks as usize * 512];
    let medium = RamMedium::<64>::with_rom(&rom, &mut ram);
    let mut memory = vec![0u8; 96 << 10];
    let disk =
        OverlayDisk::open_or_create(&medium, layout, Geometry::default(), &mut memory, 16 << 10)
            .unwrap();
    {
        let manager = VolumeManager::new(disk, Clock);
        let volume = manager.open_volume(VolumeIdx(0)).unwrap();
        let root = volume.open_root_dir().unwrap();
        let file = root
            .open_file_in_dir("NEW.TXT", Mode::ReadWriteCreateOrTruncate)
            .unwrap();
        file.write(NEW).unwrap();
        file.close().unwrap();
        root.close().unwrap();
        volume.close().unwrap();
        let (disk, _) = manager.free();
        disk.flush().unwrap();
        assert!(disk.close().unwrap());
    }
    let overlay = medium.with_durable(|bytes| bytes.to_vec()).unwrap();
    let image = dir.join("disk.fvd");
    std::fs::write(&image, overlay).unwrap();
    let image = image.to_str().unwrap();
    let flat = dir.join("flat.raw");
    let flat = flat.to_str().unwrap();

    let report = fvd_img(&["check", image]);
    assert!(report.contains("No errors"), "{report}");
    fvd_img(&["convert", "-O", "raw", image, flat]);
    run("fsck.fat", &["-n", flat]);
    assert_eq!(run("mtype", &["-i", flat, "::NEW.TXT"]), NEW);
    // The base was only read.
    assert_eq!(std::fs::read(dir.join("base.img")).unwrap(), rom);
    std::fs::remove_dir_all(&dir).unwrap();
}
