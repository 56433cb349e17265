//! `gatectl ports`: the serial ports of this box, with what sysfs knows
//! about each (USB vendor and product ids, names, serial number, driver) and
//! its stable `/dev/serial/by-id` names, so a technician can fill in
//! `[devices.*] port` without guessing which `ttyUSBn` is which. Reads
//! sysfs only; needs no daemon and no permission on the ports themselves.

use std::path::{Path, PathBuf};

/// What sysfs says about a USB device a port hangs off.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsbInfo {
    pub vendor_id: String,
    pub product_id: String,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialPort {
    /// `/dev/ttyUSB0`
    pub dev: PathBuf,
    /// Names under `/dev/serial/by-id` pointing at it.
    pub by_id: Vec<PathBuf>,
    pub driver: Option<String>,
    pub usb: Option<UsbInfo>,
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// The ports under `sys` (normally `/sys`) with their names under `dev`
/// (normally `/dev`), sorted by name.
pub fn list(sys: &Path, dev: &Path) -> Vec<SerialPort> {
    let by_id = by_id_names(&dev.join("serial/by-id"));
    let Ok(entries) = std::fs::read_dir(sys.join("class/tty")) else { return Vec::new() };
    let sys_root = std::fs::canonicalize(sys).unwrap_or_else(|_| sys.to_path_buf());
    let mut ports = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let tty = sys.join("class/tty").join(&name);
        // Virtual terminals and pseudo-terminals have no device behind them.
        let Ok(device) = std::fs::canonicalize(tty.join("device")) else { continue };
        // The 8250 driver registers placeholder ttyS ports that have no
        // hardware under the `serial8250` platform device; real on-board
        // UARTs sit under PNP, ACPI or PCI instead.
        if device.components().any(|c| c.as_os_str() == "serial8250") {
            continue;
        }
        // Newer kernels put generic serial-base devices (drivers "port" and
        // "ctrl") between the tty and the hardware: name the hardware's
        // driver instead.
        let driver = device.ancestors().take(3).find_map(|d| {
            let name = std::fs::read_link(d.join("driver")).ok()?.file_name()?.to_string_lossy().into_owned();
            (!matches!(name.as_str(), "port" | "ctrl")).then_some(name)
        });
        // Stop at the sysfs root: a USB ancestor is never above it.
        let usb = device.ancestors().take_while(|d| d.starts_with(&sys_root)).find_map(|d| {
            let vendor_id = read_trimmed(&d.join("idVendor"))?;
            Some(UsbInfo {
                vendor_id,
                product_id: read_trimmed(&d.join("idProduct")).unwrap_or_default(),
                manufacturer: read_trimmed(&d.join("manufacturer")),
                product: read_trimmed(&d.join("product")),
                serial: read_trimmed(&d.join("serial")),
            })
        });
        let names = by_id.iter().filter(|(_, target)| *target == name).map(|(link, _)| link.clone()).collect();
        ports.push(SerialPort { dev: dev.join(&name), by_id: names, driver, usb });
    }
    ports.sort_by(|a, b| a.dev.cmp(&b.dev));
    ports
}

/// (link, tty name it points to) for each entry of `/dev/serial/by-id`.
fn by_id_names(dir: &Path) -> Vec<(PathBuf, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut names: Vec<(PathBuf, String)> = entries
        .flatten()
        .filter_map(|e| {
            let target = std::fs::read_link(e.path()).ok()?;
            Some((e.path(), target.file_name()?.to_string_lossy().into_owned()))
        })
        .collect();
    names.sort();
    names
}

/// One block per port, for people.
pub fn render(ports: &[SerialPort]) -> String {
    if ports.is_empty() {
        return "no serial ports found (looked in /sys/class/tty); is the USB adapter plugged in?\n".to_owned();
    }
    let mut out = String::new();
    for port in ports {
        out.push_str(&port.dev.display().to_string());
        match &port.usb {
            Some(usb) => {
                out.push_str(&format!("  usb {}:{}", usb.vendor_id, usb.product_id));
                for part in [&usb.manufacturer, &usb.product].into_iter().flatten() {
                    out.push_str(&format!(" {part}"));
                }
                if let Some(serial) = &usb.serial {
                    out.push_str(&format!(" (serial {serial})"));
                }
            }
            None => out.push_str("  on-board"),
        }
        if let Some(driver) = &port.driver {
            out.push_str(&format!("  driver {driver}"));
        }
        out.push('\n');
        for link in &port.by_id {
            out.push_str(&format!("    {}\n", link.display()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn usb_ids_come_from_the_nearest_usb_ancestor() {
        let root = tempfile::tempdir().expect("tempdir");
        let sys = root.path().join("sys");
        let dev = root.path().join("dev");
        // A CH340 adapter: tty -> interface -> USB device with ids.
        let usb = sys.join("devices/pci0000:00/usb1/1-1");
        let iface = usb.join("1-1:1.0/ttyUSB0");
        write(&usb.join("idVendor"), "1a86\n");
        write(&usb.join("idProduct"), "7523\n");
        write(&usb.join("product"), "USB Serial\n");
        std::fs::create_dir_all(&iface).expect("iface");
        std::fs::create_dir_all(sys.join("bus/usb-serial/drivers/ch341-uart")).expect("driver");
        symlink(sys.join("bus/usb-serial/drivers/ch341-uart"), iface.join("driver")).expect("driver link");
        std::fs::create_dir_all(sys.join("class/tty/ttyUSB0")).expect("class");
        symlink(&iface, sys.join("class/tty/ttyUSB0/device")).expect("device link");
        // A placeholder 8250 port and a virtual console: left out.
        let placeholder = sys.join("devices/platform/serial8250");
        std::fs::create_dir_all(&placeholder).expect("8250");
        std::fs::create_dir_all(sys.join("class/tty/ttyS3")).expect("class");
        symlink(&placeholder, sys.join("class/tty/ttyS3/device")).expect("link");
        std::fs::create_dir_all(sys.join("class/tty/tty1")).expect("vt");
        // The stable name.
        std::fs::create_dir_all(dev.join("serial/by-id")).expect("by-id");
        symlink("../../ttyUSB0", dev.join("serial/by-id/usb-1a86_USB_Serial-if00-port0")).expect("by-id link");

        let ports = list(&sys, &dev);
        assert_eq!(ports.len(), 1, "{ports:?}");
        let port = &ports[0];
        assert_eq!(port.dev, dev.join("ttyUSB0"));
        assert_eq!(port.driver.as_deref(), Some("ch341-uart"));
        let usb = port.usb.as_ref().expect("usb");
        assert_eq!((usb.vendor_id.as_str(), usb.product_id.as_str()), ("1a86", "7523"));
        assert_eq!(usb.product.as_deref(), Some("USB Serial"));
        assert_eq!(port.by_id, [dev.join("serial/by-id/usb-1a86_USB_Serial-if00-port0")]);
        let text = render(&ports);
        assert!(text.contains("usb 1a86:7523 USB Serial  driver ch341-uart"), "{text}");
        assert!(text.contains("usb-1a86_USB_Serial-if00-port0"), "{text}");
        assert!(render(&[]).starts_with("no serial ports found"));
    }
}
