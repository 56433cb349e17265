//! A camera as the daemon sees one through `[devices.camera]
//! snapshot_file`: an image file that always shows the current view. The
//! simulator "holds" each recorded frame of a folder in front of the lens for
//! a while, then shows nothing, by replacing the file atomically (write a
//! temporary file, rename it over the view), so a reader never sees half a
//! frame.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The image files of `dir` in name order (`.png`, `.jpg`, `.jpeg`, `.pgm`).
pub fn frames_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut frames = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        if path.is_file() && matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg" | "pgm")) {
            frames.push(path);
        }
    }
    frames.sort();
    if frames.is_empty() {
        bail!("{} holds no .png, .jpg or .pgm frames", dir.display());
    }
    Ok(frames)
}

/// Shows `frame` as the current view at `view` (same extension kind as the
/// frame is up to the caller: the daemon reads by the view's extension).
pub fn show(frame: &Path, view: &Path) -> Result<()> {
    let tmp = view.with_extension(format!("{}.tmp", view.extension().and_then(|e| e.to_str()).unwrap_or("img")));
    std::fs::copy(frame, &tmp).with_context(|| format!("cannot copy {} to {}", frame.display(), tmp.display()))?;
    std::fs::rename(&tmp, view).with_context(|| format!("cannot replace {}", view.display()))?;
    Ok(())
}

/// Takes the view away (nothing in front of the camera).
pub fn clear(view: &Path) -> Result<()> {
    match std::fs::remove_file(view) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", view.display())),
    }
}

/// Plays the frames: each held `hold`, then `gap` of empty view; forever
/// with `repeat`. Returns when done (or never, with `repeat`).
pub async fn play(frames: &[PathBuf], view: &Path, hold: Duration, gap: Duration, repeat: bool) -> Result<()> {
    loop {
        for frame in frames {
            show(frame, view)?;
            println!("camera: showing {}", frame.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
            tokio::time::sleep(hold).await;
            clear(view)?;
            tokio::time::sleep(gap).await;
        }
        if !repeat {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_listed_in_name_order_and_shown_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["b.png", "a.pgm", "notes.txt", "c.JPG"] {
            std::fs::write(dir.path().join(name), name).expect("write");
        }
        let frames = frames_in(dir.path()).expect("frames");
        let names: Vec<_> = frames.iter().map(|p| p.file_name().and_then(|n| n.to_str()).unwrap_or("")).collect();
        assert_eq!(names, ["a.pgm", "b.png", "c.JPG"]);
        let view = dir.path().join("view.png");
        show(&frames[1], &view).expect("show");
        assert_eq!(std::fs::read(&view).expect("view"), b"b.png");
        assert!(!dir.path().join("view.png.tmp").exists());
        clear(&view).expect("clear");
        clear(&view).expect("clearing twice is fine");
        assert!(!view.exists());
        assert!(frames_in(&dir.path().join("missing")).is_err());
    }
}
