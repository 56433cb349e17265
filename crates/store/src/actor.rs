//! A store connection on its own thread, for async callers: no SQLite call
//! (and no fsync) ever runs on an async worker thread.
//!
//! One thread per connection. Jobs (closures over `&mut Store`) come through
//! a bounded channel, so a flood of callers waits for room instead of
//! growing memory, and each answer goes back by oneshot. The thread ends
//! once every handle is dropped and the jobs already queued are done.

use crate::{Result, Store, StoreError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// Jobs waiting for a connection thread; callers beyond it wait for room.
const QUEUE: usize = 64;

type Job = Box<dyn FnOnce(&mut Store) + Send>;

/// A handle on one connection thread. Cheap to clone; clones share the
/// connection (and so its order: jobs run one after another, as sent).
#[derive(Debug, Clone)]
pub struct StoreThread {
    jobs: mpsc::Sender<Job>,
    path: Arc<PathBuf>,
    /// Becomes true once the thread has closed its connection.
    closed: watch::Receiver<bool>,
}

/// Resolves once a connection thread has finished its jobs and closed the
/// database (see [`StoreThread::closed`]).
#[derive(Debug, Clone)]
pub struct Closed(watch::Receiver<bool>);

impl Closed {
    pub async fn wait(mut self) {
        // An error means the thread is gone without saying so: closed too.
        let _ = self.0.wait_for(|closed| *closed).await;
    }
}

/// How much of the CPU a connection thread's work may take from the
/// decision path when both want it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// Decisions and what a card waits for: the normal share.
    Decisions,
    /// Work no card waits for (publishing the outbox, applying an identity
    /// snapshot, the store's health checks): [`BACKGROUND_NICE`] steps
    /// nicer, so on a busy two-core box a card is decided first.
    Background,
}

/// How many nice steps a [`Urgency::Background`] thread gives up: at 10 the
/// kernel weighs it about a tenth of a normal thread.
pub const BACKGROUND_NICE: i32 = 10;

/// Sets the calling thread's nice value to [`BACKGROUND_NICE`] steps above
/// the process's main thread (Linux keeps the nice value per thread, so the
/// rest of the process is untouched; counting from the main thread, a
/// background thread started by another one is not lowered twice).
/// Lowering needs no privilege; a failure is logged, and the thread works
/// on at the normal priority.
pub fn lower_this_threads_priority(name: &str) {
    let main_thread = rustix::process::getpid();
    let tid = rustix::thread::gettid();
    let lowered = rustix::process::getpriority_process(Some(main_thread))
        .and_then(|nice| rustix::process::setpriority_process(Some(tid), (nice + BACKGROUND_NICE).min(19)));
    if let Err(e) = lowered {
        tracing::warn!(thread = name, error = %e, "cannot lower a background thread's priority");
    }
}

impl StoreThread {
    /// Opens the databases at `path` on a new thread named `store-{name}`,
    /// for decisions (see [`StoreThread::open_with`]).
    pub async fn open(path: &Path, name: &str) -> Result<StoreThread> {
        StoreThread::open_with(path, name, Urgency::Decisions).await
    }

    /// Opens the databases at `path` on a new thread named `store-{name}`
    /// that runs at `urgency`.
    pub async fn open_with(path: &Path, name: &str, urgency: Urgency) -> Result<StoreThread> {
        let (jobs, mut queue) = mpsc::channel::<Job>(QUEUE);
        let (opened_tx, opened) = oneshot::channel();
        let (closed_tx, closed) = watch::channel(false);
        let owned = path.to_owned();
        let thread_name = format!("store-{name}");
        let spawned = std::thread::Builder::new().name(thread_name.clone()).spawn(move || {
            if urgency == Urgency::Background {
                lower_this_threads_priority(&thread_name);
            }
            let mut store = match Store::open(&owned) {
                Ok(store) => {
                    let _ = opened_tx.send(Ok(()));
                    store
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                    return;
                }
            };
            while let Some(job) = queue.blocking_recv() {
                job(&mut store);
            }
            drop(store);
            let _ = closed_tx.send(true);
        });
        let stopped = || StoreError::Stopped { path: path.to_owned() };
        if spawned.is_err() {
            return Err(stopped());
        }
        opened.await.map_err(|_| stopped())??;
        Ok(StoreThread { jobs, path: Arc::new(path.to_owned()), closed })
    }

    /// A signal for when this connection's thread has closed the database:
    /// after every handle is dropped and the queued jobs are done. Holding
    /// it does not keep the thread alive.
    pub fn closed(&self) -> Closed {
        Closed(self.closed.clone())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `job` on the connection's thread and waits for its answer.
    pub async fn call<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |store| {
            let _ = reply.send(job(store));
        });
        let stopped = || StoreError::Stopped { path: self.path.to_path_buf() };
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Runs `job` on the connection's thread without waiting for it. Fails
    /// at once (handing nothing over) when the queue is full or the thread
    /// is gone: for callers that must never wait on the database.
    pub fn try_submit(&self, job: impl FnOnce(&mut Store) + Send + 'static) -> Result<(), SubmitError> {
        self.jobs.try_send(Box::new(job)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SubmitError::Full,
            mpsc::error::TrySendError::Closed(_) => SubmitError::Stopped,
        })
    }
}

/// Why [`StoreThread::try_submit`] handed nothing over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the store's queue is full")]
    Full,
    #[error("the store's connection thread has stopped")]
    Stopped,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn jobs_run_off_the_runtime_thread_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StoreThread::open(&dir.path().join("g.db"), "test").await.expect("open");
        let runtime_thread = std::thread::current().id();
        let (thread, seq) = store
            .call(|s| {
                let seq = s.append_event("events", crate::Priority::Routine, 1, |seq| vec![seq as u8])?;
                Ok((std::thread::current().name().map(str::to_owned), seq))
            })
            .await
            .expect("call");
        assert_eq!(thread.as_deref(), Some("store-test"));
        assert_eq!(seq, 1);
        let other = store.call(|_| Ok(std::thread::current().id())).await.expect("call");
        assert_ne!(other, runtime_thread);
        assert_eq!(store.call(|s| s.next_seq("events")).await.expect("call"), 2);
        let closed = store.closed();
        let clone = store.clone();
        drop(store);
        // A clone keeps the connection open.
        assert_eq!(clone.call(|s| s.next_seq("events")).await.expect("call"), 2);
        drop(clone);
        closed.wait().await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_background_thread_is_nicer_than_the_decisions_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("g.db");
        let nice =
            |_: &mut Store| Ok(rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("nice"));
        let decisions = StoreThread::open(&path, "decisions").await.expect("open");
        let background = StoreThread::open_with(&path, "uplink", Urgency::Background).await.expect("open");
        let normal = decisions.call(nice).await.expect("call");
        let lowered = background.call(nice).await.expect("call");
        assert_eq!(lowered, (normal + BACKGROUND_NICE).min(19), "from {normal}");
        let here = rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("nice");
        assert_eq!(here, normal, "the caller's own thread is untouched");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_unopenable_database_is_an_error_not_a_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A folder where the file should be.
        let path = dir.path().join("g.db");
        std::fs::create_dir(&path).expect("mkdir");
        let err = StoreThread::open(&path, "test").await.expect_err("cannot open a folder");
        assert!(matches!(err, StoreError::Sqlite { .. }), "{err}");
    }
}
