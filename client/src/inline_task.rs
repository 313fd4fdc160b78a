//! Tasks that start on the thread that creates them and move to the runtime only
//! when something they waited for is ready.
//!
//! A FUSE request's task sends its RPC in its first poll. Polled on the FUSE thread,
//! the request leaves from there (the wire transport writes at once when the
//! connection is idle); had the task been spawned, the runtime's thread would wake
//! just to send it. And it is not spawned afterwards either, while it only waits
//! for the reply: spawning a pending task still wakes the runtime's thread, to
//! poll it once and find it waiting. Only its waker, when the reply arrives (on the
//! runtime's thread, usually), hands it to the runtime, which polls it right there.
//! So the runtime's thread wakes once per RPC, for the reply.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};
use std::time::Duration;
use tokio::runtime::Handle;

type BoxedTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

struct InlineTask {
    /// `None` once finished.
    future: Mutex<Option<BoxedTask>>,
    rt: Handle,
    /// A poll is on its way (woken and not yet polled): further wakes add nothing.
    scheduled: AtomicBool,
}

impl InlineTask {
    /// Polls the task once, with itself as the waker.
    fn poll_once(self: &Arc<Self>) {
        // Cleared before the poll, so that a wake during it schedules another.
        self.scheduled.store(false, Ordering::Release);
        let mut slot = self.future.lock().unwrap_or_else(|p| p.into_inner());
        let Some(future) = slot.as_mut() else {
            return;
        };
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        // A panic must not unwind into the FUSE loop that polled first (tokio
        // catches a task's panic the same way): the task ends, and its reply,
        // dropped unsent, answers the kernel with EIO.
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            future.as_mut().poll(&mut cx)
        }));
        match polled {
            Ok(std::task::Poll::Pending) => {}
            Ok(std::task::Poll::Ready(())) => *slot = None,
            Err(_) => {
                tracing::error!("a request task panicked");
                *slot = None;
            }
        }
    }
}

impl Wake for InlineTask {
    fn wake(self: Arc<Self>) {
        if self.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let rt = self.rt.clone();
        // From a runtime thread this is queued on that thread and runs as soon as
        // the waking task yields: no other thread is woken.
        rt.spawn(async move { self.poll_once() });
    }
}

/// Runs `task` on this thread until it first waits, then on `rt` whenever it is woken.
pub fn run<F>(rt: &Handle, task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let task = Arc::new(InlineTask {
        future: Mutex::new(Some(Box::pin(task))),
        rt: rt.clone(),
        scheduled: AtomicBool::new(false),
    });
    // Timers, sockets and spawns in the first poll need the runtime's context.
    let _runtime = rt.enter();
    task.poll_once();
}

/// How often [`keep_timers_armed`] wakes the runtime's thread.
pub const TIMER_ANCHOR_PERIOD: Duration = Duration::from_secs(1);

/// Keeps a timer due within [`TIMER_ANCHOR_PERIOD`] always pending on `rt`.
///
/// Every RPC arms a deadline timer in its first poll, on the FUSE thread. tokio
/// wakes its driver when a timer is armed from outside that is due before the
/// time the driver planned to wake up, or when it planned none: with nothing else
/// pending, that was every RPC's deadline, and the runtime's thread woke for each
/// request after all. With a timer always due sooner than any deadline (seconds),
/// arming one never wakes it; the price is one wake-up per period.
pub fn keep_timers_armed(rt: &Handle) {
    rt.spawn(async {
        let mut tick = tokio::time::interval(TIMER_ANCHOR_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_task_finishes_on_the_calling_thread() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let here = std::thread::current().id();
        let (tx, rx) = std::sync::mpsc::channel();
        run(rt.handle(), async move {
            tx.send(std::thread::current().id()).unwrap();
        });
        assert_eq!(
            rx.try_recv().unwrap(),
            here,
            "ran inline, before run returned"
        );
    }

    #[test]
    fn a_waiting_task_is_finished_by_the_runtime() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (ping_tx, ping_rx) = tokio::sync::oneshot::channel::<u32>();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        run(rt.handle(), async move {
            // A timer and a channel, both first polled on this thread.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let v = ping_rx.await.unwrap();
            done_tx.send(v + 1).unwrap();
        });
        assert!(done_rx.try_recv().is_err(), "still waiting");
        // Woken from outside the runtime as well as by its timer.
        ping_tx.send(41).unwrap();
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)).unwrap(), 42);
    }

    #[test]
    fn a_panicking_task_does_not_unwind_into_the_caller() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // Dropped by the unwinding task: what tells the kernel (an unsent reply).
        run(rt.handle(), async move {
            let _reply = tx;
            panic!("injected");
        });
        // Disconnected, not timed out: the task was dropped, not left pending.
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(1)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected),
            "dropped unsent"
        );
    }

    #[test]
    fn many_wakes_while_running_lose_none() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for i in 0..200u32 {
            let done_tx = done_tx.clone();
            let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
            run(rt.handle(), async move {
                let v = rx.await.unwrap();
                tokio::task::yield_now().await;
                done_tx.send(v).unwrap();
            });
            rt.spawn(async move {
                let _ = tx.send(i);
            });
        }
        let mut got: Vec<u32> = (0..200)
            .map(|_| done_rx.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, (0..200).collect::<Vec<_>>());
    }
}
