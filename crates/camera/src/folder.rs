//! A folder of still images played as a camera: recorded frames for tests,
//! demos and bench rigs, read through the same path as live frames.

use crate::{CameraError, Frame, FrameSource};
use std::path::{Path, PathBuf};

/// Plays `*.png`, `*.jpg`, `*.jpeg` and `*.pgm` files of one folder in name
/// order, one per frame, then ends.
#[derive(Debug)]
pub struct FolderSource {
    files: std::vec::IntoIter<PathBuf>,
}

impl FolderSource {
    /// Lists the folder now; files added later are not played.
    pub fn open(dir: impl AsRef<Path>) -> Result<FolderSource, CameraError> {
        let dir = dir.as_ref();
        let io = |source| CameraError::Io { path: dir.to_owned(), source };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.is_file() && kind(&path).is_some() {
                files.push(path);
            }
        }
        files.sort();
        Ok(FolderSource { files: files.into_iter() })
    }

    /// Frames left to play.
    pub fn remaining(&self) -> usize {
        self.files.len()
    }
}

impl FrameSource for FolderSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, CameraError> {
        let Some(path) = self.files.next() else { return Ok(None) };
        read_frame(&path).map(Some)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Picture,
    Pgm,
}

fn kind(path: &Path) -> Option<Kind> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "png" | "jpg" | "jpeg" => Some(Kind::Picture),
        "pgm" => Some(Kind::Pgm),
        _ => None,
    }
}

/// Reads one image file as a luma frame.
pub(crate) fn read_frame(path: &Path) -> Result<Frame, CameraError> {
    match kind(path) {
        Some(Kind::Pgm) => {
            let bytes = std::fs::read(path).map_err(|source| CameraError::Io { path: path.to_owned(), source })?;
            parse_pgm(&bytes).map_err(|detail| CameraError::Pgm { path: path.to_owned(), detail })
        }
        _ => {
            let picture = image::open(path).map_err(|source| CameraError::Image { path: path.to_owned(), source })?;
            let gray = picture.into_luma8();
            Frame::new(gray.width(), gray.height(), gray.into_raw())
        }
    }
}

/// Netpbm graymap, binary (`P5`) or plain (`P2`), any maxval up to 65535,
/// scaled to 8 bits. Parsed here because `image`'s PNM decoder would be a
/// codec more in the build for a format this simple.
fn parse_pgm(bytes: &[u8]) -> Result<Frame, String> {
    let mut pos = 0;
    let magic = token(bytes, &mut pos).ok_or("empty file")?;
    let binary = match magic {
        b"P5" => true,
        b"P2" => false,
        other => return Err(format!("magic {:?}", String::from_utf8_lossy(other))),
    };
    let mut header = [0u32; 3];
    for (slot, name) in header.iter_mut().zip(["width", "height", "maxval"]) {
        *slot = token(bytes, &mut pos)
            .and_then(|t| std::str::from_utf8(t).ok()?.parse().ok())
            .ok_or_else(|| format!("bad {name}"))?;
    }
    let [width, height, maxval] = header;
    if width == 0 || height == 0 || maxval == 0 || maxval > 65_535 {
        return Err(format!("size {width}x{height}, maxval {maxval}"));
    }
    let pixels = width as usize * height as usize;
    let scale = |v: u32| -> u8 { (v.min(maxval) * 255 / maxval) as u8 };
    let luma: Vec<u8> = if binary {
        // Exactly one whitespace byte separates the header from the raster.
        let raster = bytes.get(pos + 1..).ok_or("no raster")?;
        if maxval < 256 {
            let raster = raster.get(..pixels).ok_or("raster too short")?;
            raster.iter().map(|&v| scale(u32::from(v))).collect()
        } else {
            let raster = raster.get(..pixels * 2).ok_or("raster too short")?;
            raster.chunks_exact(2).map(|v| scale(u32::from(u16::from_be_bytes([v[0], v[1]])))).collect()
        }
    } else {
        let mut luma = Vec::with_capacity(pixels);
        for _ in 0..pixels {
            let v: u32 = token(bytes, &mut pos)
                .and_then(|t| std::str::from_utf8(t).ok()?.parse().ok())
                .ok_or("raster too short")?;
            luma.push(scale(v));
        }
        luma
    };
    Frame::new(width, height, luma).map_err(|e| e.to_string())
}

/// The next whitespace-separated header token, skipping `#` comments;
/// leaves `pos` on the byte right after it.
fn token<'a>(bytes: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    loop {
        match bytes.get(*pos)? {
            b'#' => {
                while bytes.get(*pos).is_some_and(|&b| b != b'\n') {
                    *pos += 1;
                }
            }
            b if b.is_ascii_whitespace() => *pos += 1,
            _ => break,
        }
    }
    let start = *pos;
    while bytes.get(*pos).is_some_and(|b| !b.is_ascii_whitespace()) {
        *pos += 1;
    }
    Some(&bytes[start..*pos])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgm_binary_plain_and_wide() {
        let p5 = b"P5\n# a comment\n3 1\n255\n\x00\x80\xff";
        assert_eq!(parse_pgm(p5).map(|f| (f.width, f.height, f.luma)), Ok((3, 1, vec![0, 128, 255])));
        let p2 = b"P2 2 2 15\n0 15\n 5 10\n";
        assert_eq!(parse_pgm(p2).map(|f| f.luma), Ok(vec![0, 255, 85, 170]));
        let wide = b"P5 1 1 65535\n\xff\xff";
        assert_eq!(parse_pgm(wide).map(|f| f.luma), Ok(vec![255]));
    }

    #[test]
    fn pgm_errors_are_reported() {
        assert!(parse_pgm(b"").is_err());
        assert!(parse_pgm(b"P6 1 1 255\n\x00\x00\x00").is_err());
        assert!(parse_pgm(b"P5 2 2 255\n\x00").is_err());
        assert!(parse_pgm(b"P5 0 2 255\n").is_err());
    }
}

/// One image file that something else keeps replacing with the current view
/// (a camera adapter, or `hw-sim camera`): every frame is a fresh read of the
/// file. No file means nothing in view (an empty frame), not an error: the
/// writer replaces it by rename, so a half-written file is never seen.
#[derive(Debug)]
pub struct SnapshotFileSource {
    path: PathBuf,
}

impl SnapshotFileSource {
    pub fn open(path: impl AsRef<Path>) -> Result<SnapshotFileSource, CameraError> {
        let path = path.as_ref().to_owned();
        if kind(&path).is_none() {
            return Err(CameraError::Io {
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "expected a .png, .jpg or .pgm file name",
                ),
            });
        }
        Ok(SnapshotFileSource { path })
    }
}

impl FrameSource for SnapshotFileSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, CameraError> {
        if !self.path.exists() {
            return Frame::new(1, 1, vec![0]).map(Some);
        }
        read_frame(&self.path).map(Some)
    }
}
