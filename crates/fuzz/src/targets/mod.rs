//! The fuzz targets, by name.

pub mod credentials;
pub mod devices;
pub mod downlink;
pub mod envelope;
pub mod text;

use crate::Target;
use downlink::{Downlink, Kind};

/// How a target is built (afresh after a crash).
pub type MakeTarget = fn() -> Box<dyn Target>;

/// Every target: its name (as `--target` takes it) and how to build it.
pub const TARGETS: &[(&str, MakeTarget)] = &[
    ("sam-frame", || Box::new(devices::SamFrame)),
    ("sam-card", || Box::new(devices::SamCard)),
    ("qr-framer", || Box::new(devices::QrFramerTarget)),
    ("plate-line", || Box::<devices::PlateLine>::default()),
    ("pass", || Box::<credentials::Pass>::default()),
    ("hc1", || Box::<credentials::Hc1>::default()),
    ("downlink-mode", || Box::new(Downlink::new(Kind::Mode))),
    ("downlink-identity", || Box::new(Downlink::new(Kind::Identity))),
    ("downlink-health", || Box::new(Downlink::new(Kind::Health))),
    ("downlink-health-answer", || Box::new(Downlink::new(Kind::HealthAnswer))),
    ("downlink-trust", || Box::new(Downlink::new(Kind::Trust))),
    ("envelope", || Box::<envelope::Envelope>::default()),
    ("config", || Box::<text::ConfigTarget>::default()),
    ("control", || Box::new(text::Control)),
];

pub fn by_name(name: &str) -> Option<MakeTarget> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, make)| *make)
}
