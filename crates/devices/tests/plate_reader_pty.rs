//! The plate reader driver over a real pseudo-terminal: the test plays the
//! camera adapter on the master side, writing `PLATE,COLOUR,CONFIDENCE\r\n`
//! lines, and checks events, debounce and counters.

mod support;

use gate_devices::DeviceHealth;
use gate_devices::plate_reader::{
    PlateColour, PlateEvent, PlateLineError, PlateRead, PlateReaderSettings, run_plate_reader,
};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use support::pty;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Running {
    events: mpsc::Receiver<PlateEvent>,
    health: Arc<DeviceHealth>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

fn start(settings: PlateReaderSettings) -> Running {
    let (tx, events) = mpsc::channel(16);
    let health = Arc::new(DeviceHealth::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_plate_reader(settings, tx, health.clone(), shutdown.clone()));
    Running { events, health, shutdown, task }
}

impl Running {
    async fn next_event(&mut self) -> PlateEvent {
        tokio::time::timeout(Duration::from_secs(3), self.events.recv())
            .await
            .expect("an event within 3 s")
            .expect("channel open")
    }

    async fn connected(&self) {
        wait_until("port open", || self.health.snapshot().connected).await;
    }

    async fn stop(self) -> mpsc::Receiver<PlateEvent> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .expect("driver stops within 2 s of shutdown")
            .expect("driver did not panic");
        self.events
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..300 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn read(plate: &str, colour: PlateColour, confidence: f32) -> PlateEvent {
    PlateEvent::Read(PlateRead { plate: plate.into(), colour, confidence })
}

#[tokio::test]
async fn lines_in_reads_out_once_per_car() {
    let mut pty = pty();
    let mut running = start(PlateReaderSettings::new(pty.path.clone()));
    running.connected().await;

    // A car waiting at the barrier, reported three times, the line split.
    pty.master.write_all("闽d 12345,blue,0.93\r\n闽D12345,blue,0.95\r\n闽".as_bytes()).expect("write");
    tokio::time::sleep(Duration::from_millis(20)).await;
    pty.master.write_all("D12345,blue,0.94\r\n".as_bytes()).expect("write");
    // The next car: a new-energy plate, then an unsure read.
    pty.master.write_all("粤B·D12345,GREEN,0.91\r\n京A12345,blue,0.5\r\n".as_bytes()).expect("write");

    assert_eq!(running.next_event().await, read("闽D12345", PlateColour::Blue, 0.93));
    assert_eq!(running.next_event().await, read("粤BD12345", PlateColour::Green, 0.91));
    assert_eq!(running.next_event().await, PlateEvent::LowConfidence { confidence: 0.5 });
    wait_until("every line counted", || running.health.snapshot().frames_ok == 5).await;
    let health = running.health.snapshot();
    assert!(health.connected);
    assert_eq!(health.garbage_bytes + health.length_errors, 0, "{health:?}");
    let mut events = running.stop().await;
    assert!(events.try_recv().is_err(), "a repeat was reported");
    drop(pty.slave_guard);
}

#[tokio::test]
async fn garbage_lines_are_counted_and_survived() {
    let mut pty = pty();
    let mut running = start(PlateReaderSettings::new(pty.path.clone()));
    running.connected().await;

    pty.master.write_all(b"\xFF\xFE\r\n").expect("write");
    assert_eq!(running.next_event().await, PlateEvent::Rejected(PlateLineError::NotUtf8 { len: 2 }));
    pty.master.write_all(b"nonsense\r\n").expect("write");
    assert_eq!(running.next_event().await, PlateEvent::Rejected(PlateLineError::Fields { found: 1 }));
    let mut long = vec![b'x'; 300];
    long.extend_from_slice(b"\r\n");
    pty.master.write_all(&long).expect("write");
    assert_eq!(running.next_event().await, PlateEvent::Rejected(PlateLineError::TooLong { len: 300 }));
    pty.master.write_all("闽D12_345,blue,0.9\r\n".as_bytes()).expect("write");
    assert_eq!(running.next_event().await, PlateEvent::Rejected(PlateLineError::BadPlate { len: 8 }));
    pty.master.write_all("闽D12345,black,0.99\r\n".as_bytes()).expect("write");
    assert_eq!(running.next_event().await, read("闽D12345", PlateColour::Black, 0.99));

    let health = running.health.snapshot();
    assert!(health.connected, "{health:?}");
    assert_eq!(health.frames_ok, 1, "{health:?}");
    assert_eq!(health.length_errors, 1, "{health:?}");
    let bad_plate_len = "闽D12_345,blue,0.9".len() as u64;
    assert_eq!(health.garbage_bytes, 2 + 8 + bad_plate_len, "{health:?}");
    assert_eq!(health.reconnects, 0, "{health:?}");
    let last = health.last_error.unwrap_or_default();
    assert!(last.contains("not a plate") && !last.contains("12_345"), "{last}");
    running.stop().await;
    drop(pty.slave_guard);
}
