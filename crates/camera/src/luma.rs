//! Camera pixel layouts to 8-bit luma. Kept apart from the V4L2 source so
//! the conversions are built and tested without the `camera` feature.

use crate::{CameraError, Frame};

/// How a camera's frame bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelLayout {
    /// 8-bit grayscale.
    Gray,
    /// YUV 4:2:2 packed as Y0 U Y1 V.
    Yuyv,
    /// YUV 4:2:0: the full Y plane, then interleaved UV at half size.
    Nv12,
    /// 8-bit R G B.
    Rgb,
    /// 8-bit B G R.
    Bgr,
    /// A JPEG picture per frame (most USB cameras at high resolutions).
    Mjpeg,
}

/// Converts one frame. Only the luminance is kept: the decoder needs
/// nothing else, and the Y of YUV layouts is taken as is.
pub fn to_luma(layout: PixelLayout, width: u32, height: u32, bytes: &[u8]) -> Result<Frame, CameraError> {
    let pixels = width as usize * height as usize;
    let short = |needed: usize| CameraError::Convert {
        layout,
        width,
        height,
        detail: format!("{} bytes, {needed} needed", bytes.len()),
    };
    let luma = match layout {
        PixelLayout::Gray | PixelLayout::Nv12 => bytes.get(..pixels).ok_or_else(|| short(pixels))?.to_vec(),
        PixelLayout::Yuyv => {
            let packed = bytes.get(..pixels * 2).ok_or_else(|| short(pixels * 2))?;
            packed.iter().step_by(2).copied().collect()
        }
        PixelLayout::Rgb | PixelLayout::Bgr => {
            let packed = bytes.get(..pixels * 3).ok_or_else(|| short(pixels * 3))?;
            let (r, b) = if layout == PixelLayout::Rgb { (0, 2) } else { (2, 0) };
            packed.chunks_exact(3).map(|px| rec601(px[r], px[1], px[b])).collect()
        }
        PixelLayout::Mjpeg => {
            let picture = image::load_from_memory_with_format(bytes, image::ImageFormat::Jpeg)
                .map_err(|e| CameraError::Convert { layout, width, height, detail: e.to_string() })?;
            // The JPEG's own size wins over what the camera announced.
            let gray = picture.into_luma8();
            return Frame::new(gray.width(), gray.height(), gray.into_raw());
        }
    };
    Frame::new(width, height, luma)
}

/// ITU-R BT.601 luma in integers (weights 77, 150, 29 out of 256).
fn rec601(r: u8, g: u8, b: u8) -> u8 {
    ((77 * u32::from(r) + 150 * u32::from(g) + 29 * u32::from(b)) >> 8) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_keep_the_luminance() {
        let yuyv = [10, 128, 20, 128, 30, 128, 40, 128];
        assert_eq!(to_luma(PixelLayout::Yuyv, 2, 2, &yuyv).map(|f| f.luma).ok(), Some(vec![10, 20, 30, 40]));
        let nv12 = [1, 2, 3, 4, 128, 128];
        assert_eq!(to_luma(PixelLayout::Nv12, 2, 2, &nv12).map(|f| f.luma).ok(), Some(vec![1, 2, 3, 4]));
        let rgb = [255, 255, 255, 0, 0, 0];
        assert_eq!(to_luma(PixelLayout::Rgb, 2, 1, &rgb).map(|f| f.luma).ok(), Some(vec![255, 0]));
        let bgr = [0, 0, 255];
        let red = to_luma(PixelLayout::Bgr, 1, 1, &bgr).map(|f| f.luma).ok();
        assert_eq!(red, Some(vec![rec601(255, 0, 0)]));
    }

    #[test]
    fn short_buffers_are_refused() {
        assert!(matches!(to_luma(PixelLayout::Yuyv, 4, 4, &[0; 31]), Err(CameraError::Convert { .. })));
        assert!(matches!(to_luma(PixelLayout::Mjpeg, 4, 4, b"not a jpeg"), Err(CameraError::Convert { .. })));
    }
}
