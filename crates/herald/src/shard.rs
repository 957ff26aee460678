//! The workers connections run on: one thread per core, each with a single-threaded
//! runtime, each connection on one of them for its whole life.
//!
//! On tokio's multi-threaded runtime a connection's task is woken wherever its waker is
//! called and stolen by whichever worker is free, so a fan-out to 1,000 connections
//! crossed threads up to 1,000 times (issue #11: the burst with the server free to use
//! two cores delivered a third of what it delivered pinned to one). Here the accept
//! loop hands each HTTP connection to the least loaded worker, with its socket
//! registered there; the request handlers run there, and a WebSocket it becomes stays
//! there. A publication fanned out on one worker wakes that worker's connections
//! directly and posts each other worker one list ([`crate::wake`]); every worker then
//! writes to its own sockets.
//!
//! The accept loop, the broker, the sweeper, the relay and the store's background work
//! stay on the main runtime: work a connection starts in the background (a store lookup,
//! say) goes there through [`spawn_background`]. With one core there is nothing to
//! spread: no workers are started and everything runs on the main runtime.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::wake::{self, Inbox, Resident};

/// One worker: its runtime and its inbox.
pub struct Worker {
    handle: Handle,
    inbox: Arc<Inbox>,
}

impl Worker {
    /// Runs `future` on this worker.
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(&self, future: F) {
        drop(self.handle.spawn(future));
    }

    /// `tcp`, registered with this worker's reactor instead of the caller's: the
    /// connection's task must then run here.
    pub fn adopt(&self, tcp: tokio::net::TcpStream) -> std::io::Result<tokio::net::TcpStream> {
        let std = tcp.into_std()?;
        let _here = self.handle.enter();
        tokio::net::TcpStream::from_std(std)
    }

    /// Counts one more connection living here, until the returned guard drops.
    pub fn join(&self) -> Resident {
        Resident::of(&self.inbox)
    }
}

/// The node's workers; empty when connections run on the main runtime.
pub struct Workers {
    workers: Vec<Worker>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    stop: CancellationToken,
}

thread_local! {
    /// On a worker thread: the main runtime, for background work.
    static MAIN: std::cell::RefCell<Option<Handle>> = const { std::cell::RefCell::new(None) };
}

/// How many workers `configured` means on this machine: 0 is one per core this process
/// may run on (its CPU affinity counts), and one is none at all.
pub fn count(configured: usize) -> usize {
    let n = match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    if n <= 1 {
        0
    } else {
        n
    }
}

impl Workers {
    /// Starts `n` worker threads (none for 0). Must be called on the main runtime,
    /// which background work started on a worker goes to.
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let main = Handle::current();
        let stop = CancellationToken::new();
        let mut workers = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let inbox = Inbox::new();
            workers.push(Worker {
                handle: rt.handle().clone(),
                inbox: inbox.clone(),
            });
            let (main, stop) = (main.clone(), stop.clone());
            let thread = std::thread::Builder::new()
                .name(format!("herald-ws-{i}"))
                .spawn(move || {
                    wake::set_home(&inbox);
                    let _ = MAIN.try_with(|m| *m.borrow_mut() = Some(main));
                    rt.block_on(async move {
                        tokio::spawn(inbox.clone().drain());
                        stop.cancelled().await;
                    });
                    // Dropping the runtime drops whatever still runs on it.
                    drop(rt);
                })?;
            threads.push(thread);
        }
        Ok(Workers {
            workers,
            threads: Mutex::new(threads),
            stop,
        })
    }

    /// The worker with the fewest connections; None without workers.
    pub fn pick(&self) -> Option<&Worker> {
        self.workers.iter().min_by_key(|w| w.inbox.residents())
    }

    pub fn get(&self, i: usize) -> Option<&Worker> {
        self.workers.get(i)
    }

    /// Connections living on each worker (empty without workers).
    pub fn load(&self) -> Vec<usize> {
        self.workers.iter().map(|w| w.inbox.residents()).collect()
    }

    /// Stops the workers (dropping what still runs on them) and waits for their
    /// threads. Idempotent; also done, without the wait, when the workers are dropped.
    pub fn stop(&self) {
        self.stop.cancel();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }

    /// Cancels the workers when the returned guard drops (a node dropped without a
    /// shutdown must not leave its threads behind).
    pub fn stop_on_drop(&self) -> tokio_util::sync::DropGuard {
        self.stop.clone().drop_guard()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Runs background work a connection starts (a store lookup, an acknowledgement) on the
/// main runtime when called on a worker, on the current runtime otherwise.
pub fn spawn_background<F>(future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let main = MAIN.try_with(|m| m.borrow().clone()).ok().flatten();
    match main {
        Some(main) => drop(main.spawn(future)),
        None => drop(tokio::spawn(future)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_core_means_no_workers() {
        assert_eq!(count(1), 0);
        assert_eq!(count(3), 3);
        assert!(count(0) == 0 || count(0) >= 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn connections_go_to_the_least_loaded_worker_and_background_work_to_main() {
        let workers = Workers::start(2).unwrap();
        let a = workers.pick().unwrap().join();
        let b = workers.pick().unwrap().join();
        assert_eq!(workers.load(), vec![1, 1], "spread, not stacked");
        drop(a);
        assert_eq!(workers.load(), vec![0, 1]);
        let (tx, rx) = tokio::sync::oneshot::channel();
        workers.pick().unwrap().spawn(async move {
            let on_worker = std::thread::current().name().map(str::to_owned);
            spawn_background(async move {
                let here = std::thread::current().name().map(str::to_owned);
                let _ = tx.send((on_worker, here));
            });
        });
        let (on_worker, background) = rx.await.unwrap();
        assert_eq!(on_worker.as_deref(), Some("herald-ws-0"));
        assert!(
            !background.unwrap_or_default().starts_with("herald-ws"),
            "background work runs on the main runtime"
        );
        drop(b);
        workers.stop();
    }
}
