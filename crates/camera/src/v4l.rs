//! Live frames from a V4L2 camera through nokhwa (the `camera` feature).

use crate::luma::{PixelLayout, to_luma};
use crate::{CameraError, Frame, FrameSource};
use nokhwa::Camera;
use nokhwa::utils::{ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType};
use std::fmt;

/// Every layout we convert, so any camera can be opened.
const LAYOUTS: &[FrameFormat] = &[
    FrameFormat::GRAY,
    FrameFormat::YUYV,
    FrameFormat::NV12,
    FrameFormat::MJPEG,
    FrameFormat::RAWRGB,
    FrameFormat::RAWBGR,
];

/// A V4L2 camera streaming frames, converted to luma. It is `Send` (nokhwa's
/// `camera-sync-impl`) and is only ever used by one thread at a time: the
/// camera task moves it onto the blocking pool for each frame and back.
pub struct V4lSource {
    camera: Camera,
    format: CameraFormat,
}

impl fmt::Debug for V4lSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("V4lSource").field("format", &self.format.to_string()).finish_non_exhaustive()
    }
}

impl V4lSource {
    /// Opens camera `index` (`/dev/video<index>`) near 640x480, the size the
    /// decoder is measured on.
    pub fn open(index: u32) -> Result<V4lSource, CameraError> {
        V4lSource::open_with(index, 640, 480)
    }

    /// Opens camera `index` at the mode closest to `width` x `height`,
    /// preferring uncompressed layouts (no JPEG decode per frame) and then
    /// frame rates near 30.
    pub fn open_with(index: u32, width: u32, height: u32) -> Result<V4lSource, CameraError> {
        let cameras = nokhwa::query(ApiBackend::Video4Linux).map_err(camera_error)?;
        if cameras.is_empty() {
            return Err(CameraError::NoCamera);
        }
        let wanted = CameraIndex::Index(index);
        if !cameras.iter().any(|c| *c.index() == wanted) {
            return Err(CameraError::CameraNotFound {
                index,
                present: cameras.iter().map(|c| format!("{} {}", c.index(), c.human_name())).collect(),
            });
        }
        let any = RequestedFormat::with_formats(RequestedFormatType::None, LAYOUTS);
        let mut camera = Camera::with_backend(wanted, any, ApiBackend::Video4Linux).map_err(camera_error)?;
        let formats = camera.compatible_camera_formats().map_err(camera_error)?;
        let format = formats
            .into_iter()
            .min_by_key(|f| {
                let dw = i64::from(f.width()) - i64::from(width);
                let dh = i64::from(f.height()) - i64::from(height);
                let compressed = f.format() == FrameFormat::MJPEG;
                (dw * dw + dh * dh, compressed, (i64::from(f.frame_rate()) - 30).abs())
            })
            .ok_or_else(|| CameraError::Camera(format!("camera {index} offers no usable pixel format")))?;
        camera
            .set_camera_requset(RequestedFormat::with_formats(RequestedFormatType::Exact(format), LAYOUTS))
            .map_err(camera_error)?;
        camera.open_stream().map_err(camera_error)?;
        Ok(V4lSource { camera, format })
    }

    /// The mode the camera streams in.
    pub fn format(&self) -> CameraFormat {
        self.format
    }
}

impl FrameSource for V4lSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, CameraError> {
        let buffer = self.camera.frame().map_err(camera_error)?;
        let res = buffer.resolution();
        to_luma(layout(buffer.source_frame_format()), res.width(), res.height(), buffer.buffer()).map(Some)
    }
}

impl Drop for V4lSource {
    fn drop(&mut self) {
        // Release the device for the next open; nothing to do on failure.
        let _ = self.camera.stop_stream();
    }
}

fn layout(format: FrameFormat) -> PixelLayout {
    match format {
        FrameFormat::GRAY => PixelLayout::Gray,
        FrameFormat::YUYV => PixelLayout::Yuyv,
        FrameFormat::NV12 => PixelLayout::Nv12,
        FrameFormat::MJPEG => PixelLayout::Mjpeg,
        FrameFormat::RAWRGB => PixelLayout::Rgb,
        FrameFormat::RAWBGR => PixelLayout::Bgr,
    }
}

fn camera_error(e: nokhwa::NokhwaError) -> CameraError {
    CameraError::Camera(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_camera_is_a_clear_error() {
        // Only meaningful on a machine without cameras (CI, this box).
        let has_camera = std::fs::read_dir("/dev")
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("video")))
            .unwrap_or(false);
        if has_camera {
            return;
        }
        let err = V4lSource::open(0).expect_err("no camera to open");
        assert!(matches!(err, CameraError::NoCamera), "{err}");
        assert_eq!(err.to_string(), "no camera found (V4L2 lists none)");
    }
}
