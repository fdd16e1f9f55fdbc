//! Writes a small image folder to try Wick's own-data path by hand:
//! `cargo run --release --example image_folder -- /tmp/shapes-folder [IMAGES_PER_CLASS]`, then
//! `wick data check /tmp/shapes-folder/images --layouts /tmp/shapes-folder/layout_dataset.jsonl`.
//!
//! Three classes of procedural shapes as PNG and JPEG files (some non-square), a layout JSONL in pixels, and on
//! purpose one of each problem the check finds: a truncated file, an empty file, a text file, a duplicate, a
//! layout line for a missing image, a box out of range and an unknown class.

#[path = "../tests/common/folder.rs"]
mod folder;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(out) = args.next() else {
        eprintln!("usage: image_folder OUT_DIR [IMAGES_PER_CLASS]");
        std::process::exit(2);
    };
    let per_class: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(40);
    let root = std::path::Path::new(&out).join("images");
    if root.exists() {
        eprintln!("{} exists already; choose a new folder", root.display());
        std::process::exit(1);
    }
    let layouts = folder::image_folder(&root, per_class);
    println!("wrote {} and {}", root.display(), layouts.display());
}
