//! The thread that runs a Replica1 brick's mutations, one after another.
//!
//! Every mutation takes the applier's lock, so running them on tokio's
//! blocking pool made dozens of pool threads queue on one mutex under load
//! (a 4 KiB random-write benchmark keeps 128 writes in flight): the brick
//! spent its time in futex wake-ups and thread hand-offs rather than in
//! applying. One long-lived thread fed by a channel applies in arrival order
//! with the lock uncontended, and a request costs one channel send and one
//! wake-up of its task.

use crate::error::FsResult;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

type Job = Box<dyn FnOnce() + Send>;

/// Mutations queued beyond this wait in their gRPC tasks (backpressure).
const QUEUE: usize = 1024;

/// Handle to the apply thread; the thread ends when the last handle is dropped.
pub struct ApplyThread {
    tx: mpsc::Sender<Job>,
}

impl ApplyThread {
    pub fn start() -> FsResult<ApplyThread> {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("kadalu-apply".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    job();
                }
            })?;
        Ok(ApplyThread { tx })
    }

    /// Runs `f` on the apply thread and returns its result. A panic in `f` is
    /// an internal error for that request only; the thread carries on (the
    /// applier's state is sound: the command's transaction was dropped).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> FsResult<T> + Send + 'static,
    ) -> Result<T, Status> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(caught(f).and_then(|r| r.map_err(Status::from)));
        });
        self.tx
            .send(job)
            .await
            .map_err(|_| Status::unavailable("the brick's apply thread stopped"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(Status::internal("the apply thread dropped the request")))
    }
}

/// Runs `f` where it is called (the apply thread, or a runtime worker for a
/// command applied inline): a panic is an internal error for that request only.
pub fn caught<R>(f: impl FnOnce() -> R) -> Result<R, Status> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|_| Status::internal("applying the request panicked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_in_order_and_survives_a_panic() {
        let t = ApplyThread::start().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waits = Vec::new();
        for i in 0..100 {
            let s = seen.clone();
            waits.push(t.run(move || {
                s.lock().unwrap().push(i);
                Ok(i)
            }));
        }
        for (i, w) in waits.into_iter().enumerate() {
            assert_eq!(w.await.unwrap(), i);
        }
        assert_eq!(*seen.lock().unwrap(), (0..100).collect::<Vec<_>>());
        let err = t
            .run(|| -> FsResult<()> { panic!("boom") })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal);
        assert_eq!(t.run(|| Ok(7)).await.unwrap(), 7);
    }
}
