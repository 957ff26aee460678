//! Waking connection tasks that live on other threads: once per thread per publication,
//! not once per recipient.
//!
//! With `ws.workers` set, connections run on worker threads of their own
//! ([`crate::shard`]), each a single-threaded runtime (without it, every wake is direct
//! and none of this applies). Waking a task of such a runtime from another thread puts it
//! in the runtime's shared queue and unparks its thread — a write to its eventfd, a
//! syscall — per task. A publication to 10,000 recipients spread over two workers would
//! pay that 5,000 times (issue #11, "more cores must never mean less": the unpinned
//! burst fell to a third of the pinned one this way).
//!
//! So a fan-out opens a [`Scope`]. Inside it a push that must wake a connection of
//! another worker takes the connection's waker and keeps it; a connection of this thread
//! is woken at once (its runtime's local queue, no syscall). When the outermost scope
//! ends, each worker gets everything kept for it in one [`Inbox`] post — one lock, one
//! unpark — and its drainer task wakes those connections on their own thread. While a
//! drainer has not run yet, later posts find it already woken: under load a worker is
//! unparked less than once per publication. Outside a scope a wake happens at once, so
//! a push from anywhere is never lost.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use futures_util::task::AtomicWaker;

/// The wakers posted to one worker, its drainer's waker, and how many connections
/// call the worker home (so new ones go where there are fewest).
#[derive(Default)]
pub struct Inbox {
    pending: Mutex<Vec<Waker>>,
    drainer: AtomicWaker,
    residents: AtomicUsize,
}

impl Inbox {
    pub fn new() -> Arc<Inbox> {
        Arc::new(Inbox::default())
    }

    pub fn residents(&self) -> usize {
        self.residents.load(Relaxed)
    }

    /// Hands `wakers` to the worker (leaving `wakers` empty, with whatever capacity the
    /// worker's spare list had) and unparks its drainer.
    fn post(&self, wakers: &mut Vec<Waker>) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.is_empty() {
                std::mem::swap(&mut *pending, wakers);
            } else {
                pending.append(wakers);
            }
        }
        self.drainer.wake();
    }

    /// The worker's drainer: wakes, on the worker's own thread, every task posted to
    /// it. Runs until its runtime is dropped.
    pub async fn drain(self: Arc<Inbox>) {
        let mut spare: Vec<Waker> = Vec::new();
        std::future::poll_fn(move |cx| {
            // Registered before looking: a post after the look wakes us again.
            self.drainer.register(cx.waker());
            {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                std::mem::swap(&mut *pending, &mut spare);
            }
            for waker in spare.drain(..) {
                waker.wake();
            }
            Poll::<()>::Pending
        })
        .await;
    }
}

/// A connection that calls `inbox`'s worker home: counted there until dropped.
pub struct Resident(Arc<Inbox>);

impl Resident {
    pub fn of(inbox: &Arc<Inbox>) -> Resident {
        inbox.residents.fetch_add(1, Relaxed);
        Resident(inbox.clone())
    }

    pub fn inbox(&self) -> &Arc<Inbox> {
        &self.0
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        self.0.residents.fetch_sub(1, Relaxed);
    }
}

/// Wakers kept by the open scopes of this thread, by the inbox they go to.
#[derive(Default)]
struct Kept {
    depth: u32,
    by_inbox: Vec<(Arc<Inbox>, Vec<Waker>)>,
}

/// How many distinct inboxes a thread remembers between scopes (one per worker of each
/// node in this process); past it the list is pruned of inboxes nobody else holds.
const REMEMBERED: usize = 32;

thread_local! {
    /// The inbox of the worker running on this thread; None elsewhere.
    static HOME: RefCell<Option<Arc<Inbox>>> = const { RefCell::new(None) };
    static KEPT: RefCell<Kept> = RefCell::new(Kept::default());
}

/// Marks this thread as the worker `inbox` belongs to: its connections are woken
/// directly from here.
pub fn set_home(inbox: &Arc<Inbox>) {
    let _ = HOME.try_with(|h| *h.borrow_mut() = Some(inbox.clone()));
}

fn is_home(inbox: &Arc<Inbox>) -> bool {
    HOME.try_with(|h| h.borrow().as_ref().is_some_and(|i| Arc::ptr_eq(i, inbox)))
        .unwrap_or(false)
}

/// A connection set up on this thread lives here: counted on this thread's worker, if
/// it is one.
pub fn resident_here() -> Option<Resident> {
    HOME.try_with(|h| h.borrow().as_ref().map(Resident::of))
        .ok()
        .flatten()
}

/// A fan-out in progress on this thread: wakes for other workers wait for its end.
/// Scopes nest; the outermost one posts.
#[must_use = "the scope ends when dropped"]
pub struct Scope(());

impl Scope {
    pub fn begin() -> Scope {
        let _ = KEPT.try_with(|k| k.borrow_mut().depth += 1);
        Scope(())
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let _ = KEPT.try_with(|k| {
            let mut k = k.borrow_mut();
            k.depth = k.depth.saturating_sub(1);
            if k.depth > 0 {
                return;
            }
            for (inbox, wakers) in &mut k.by_inbox {
                if !wakers.is_empty() {
                    inbox.post(wakers);
                }
            }
            if k.by_inbox.len() > REMEMBERED {
                k.by_inbox.retain(|(inbox, _)| Arc::strong_count(inbox) > 1);
            }
        });
    }
}

/// Wakes the task registered in `waker`, which lives on the worker `home` (None: the
/// main runtime). Inside a [`Scope`], a task of another worker is woken when the scope
/// ends, with every other task kept for that worker.
pub fn wake(waker: &AtomicWaker, home: Option<&Arc<Inbox>>) {
    let Some(inbox) = home.filter(|i| !is_home(i)) else {
        return waker.wake();
    };
    let kept = KEPT.try_with(|k| {
        // Busy only while a scope posts (nothing wakes from in there): wake at once.
        let Ok(mut k) = k.try_borrow_mut() else {
            return false;
        };
        if k.depth == 0 {
            return false;
        }
        if let Some(w) = waker.take() {
            match k.by_inbox.iter_mut().find(|(i, _)| Arc::ptr_eq(i, inbox)) {
                Some((_, wakers)) => wakers.push(w),
                None => k.by_inbox.push((inbox.clone(), vec![w])),
            }
        }
        true
    });
    if kept != Ok(true) {
        waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::SeqCst;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    fn registered(count: &Arc<Count>) -> AtomicWaker {
        let w = AtomicWaker::new();
        w.register(&Waker::from(count.clone()));
        w
    }

    #[test]
    fn outside_a_scope_a_wake_is_immediate() {
        let (count, inbox) = (Arc::new(Count(AtomicUsize::new(0))), Inbox::new());
        wake(&registered(&count), Some(&inbox));
        assert_eq!(count.0.load(SeqCst), 1);
        assert!(inbox.pending.lock().unwrap().is_empty());
    }

    #[test]
    fn a_scope_posts_each_inbox_once_when_it_ends() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let drainer = Arc::new(Count(AtomicUsize::new(0)));
        let (a, b) = (Inbox::new(), Inbox::new());
        a.drainer.register(&Waker::from(drainer.clone()));
        b.drainer.register(&Waker::from(drainer.clone()));
        {
            let _outer = Scope::begin();
            {
                let _inner = Scope::begin();
                for _ in 0..3 {
                    wake(&registered(&count), Some(&a));
                }
            }
            assert!(
                a.pending.lock().unwrap().is_empty(),
                "the outer scope posts"
            );
            wake(&registered(&count), Some(&b));
            wake(&registered(&count), None);
            assert_eq!(count.0.load(SeqCst), 1, "the main runtime's task at once");
        }
        assert_eq!(a.pending.lock().unwrap().len(), 3);
        assert_eq!(b.pending.lock().unwrap().len(), 1);
        assert_eq!(drainer.0.load(SeqCst), 2, "one unpark per inbox");
        assert_eq!(count.0.load(SeqCst), 1, "the rest wait for their drainers");
    }

    #[test]
    fn the_home_worker_wakes_its_own_tasks_at_once() {
        let (count, inbox) = (Arc::new(Count(AtomicUsize::new(0))), Inbox::new());
        std::thread::scope(|s| {
            s.spawn(|| {
                set_home(&inbox);
                let _scope = Scope::begin();
                wake(&registered(&count), Some(&inbox));
                assert_eq!(count.0.load(SeqCst), 1);
            });
        });
        assert!(inbox.pending.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_drainer_wakes_what_was_posted() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let inbox = Inbox::new();
        let drainer = tokio::spawn(inbox.clone().drain());
        tokio::task::yield_now().await;
        {
            let _scope = Scope::begin();
            for _ in 0..5 {
                wake(&registered(&count), Some(&inbox));
            }
        }
        for _ in 0..100 {
            if count.0.load(SeqCst) == 5 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(count.0.load(SeqCst), 5);
        drainer.abort();
    }
}
