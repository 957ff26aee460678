//! Fan-out to 10,000 in-memory recipients, on a runtime of 1 and of 2 worker threads
//! (issue #11, "more cores must never mean less").
//!
//! The hub is herald's own (`Hub::new`, real `ConnHandle`s and outboxes registered in
//! its registry); each recipient is a task that drains its outbox exactly as a
//! connection's writer does (`Outbox::next_batch`), without a socket, so what is timed
//! is the publication's way through the hub: one frame built, a refcount pushed per
//! recipient, the recipients' tasks woken and run. The publisher is a task on the same
//! runtime, as an HTTP handler or a backend connection is. One iteration = one
//! publication to everyone, timed until every recipient has taken it.
//!
//! Before the timed groups, the bench counts the heap allocations `Inlet::deliver`
//! makes on its own thread (a counting global allocator): into idle queues and into
//! busy ones. It prints them; the hot-path claim it checks is "no per-recipient
//! allocation or copy while a recipient is busy".
//!
//!   cargo bench --bench fanout

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::auth::Identity;
use herald::config::Config;
use herald::hub::fanout::{Exclude, Inlet, Publication, Route, Target};
use herald::hub::registry::{ConnHandle, Registration};
use herald::hub::Hub;
use herald::ids::{ConnId, UserId};
use herald::metrics::Metrics;
use herald::outbox::{Batch, Outbox};
use serde_json::value::RawValue;
use tokio::sync::Notify;

const RECIPIENTS: usize = 10_000;

/// Counts allocations made by the current thread while `COUNTING` is set on it.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = COUNTING.try_with(|on| {
            if on.get() {
                let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
            }
        });
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    ALLOCATIONS.with(|n| n.get())
}

struct Node {
    inlet: Arc<Inlet>,
    _registrations: Vec<Registration>,
}

/// A hub with `RECIPIENTS` registered connections whose queues never fill.
fn node() -> (Node, Vec<Arc<Outbox>>) {
    let mut cfg = Config::default();
    cfg.limits.connections_per_ip = RECIPIENTS * 2;
    let (hub, inlet) = Hub::new(&cfg, Arc::new(Metrics::default()));
    let mut registrations = Vec::with_capacity(RECIPIENTS);
    let mut outboxes = Vec::with_capacity(RECIPIENTS);
    for i in 0..RECIPIENTS {
        let user = UserId::from(format!("u{i}"));
        let outbox = Arc::new(Outbox::new(1 << 20, 1 << 30));
        let identity = Identity {
            user: user.clone(),
            device: None,
            groups: vec![],
            admin: false,
            backend: false,
            expires_at: None,
        };
        let (id, conn_id): (u64, ConnId) = hub.next_conn_id();
        let handle = ConnHandle::new(
            id,
            conn_id,
            identity,
            outbox.clone(),
            [127, 0, 0, 1].into(),
            hub.now_ms(),
            0,
        );
        let admission = hub
            .registry
            .admit(&user, [127, 0, 0, 1].into())
            .expect("under the caps");
        registrations.push(hub.registry.register(admission, Arc::new(handle)));
        outboxes.push(outbox);
    }
    let node = Node {
        inlet: Arc::new(inlet),
        _registrations: registrations,
    };
    (node, outboxes)
}

fn publication() -> Publication {
    Publication {
        target: Target::All,
        exclude: Exclude::default(),
        data: RawValue::from_string(format!("\"{}\"", "x".repeat(100))).expect("JSON"),
        accepted: Instant::now(),
        creator: None,
        route: Route::Normal,
    }
}

/// Deliveries taken by the recipients, and a wake-up for whoever waits for a total.
struct Taken {
    count: AtomicU64,
    target: AtomicU64,
    done: Notify,
}

/// One task per recipient, draining its outbox as a writer would (without a socket).
fn spawn_recipients(rt: &tokio::runtime::Runtime, outboxes: &[Arc<Outbox>], taken: &Arc<Taken>) {
    for outbox in outboxes {
        let (outbox, taken) = (outbox.clone(), taken.clone());
        rt.spawn(async move {
            let (mut control, mut data) = (Vec::new(), Vec::new());
            loop {
                let batch = outbox.next_batch(&mut control, &mut data).await;
                let n = data.len() as u64;
                let total = taken.count.fetch_add(n, Relaxed) + n;
                if total == taken.target.load(Relaxed) {
                    taken.done.notify_one();
                }
                control.clear();
                data.clear();
                if batch == Batch::Finish {
                    return;
                }
            }
        });
    }
}

fn report_allocations() {
    let (node, _outboxes) = node();
    let p = publication();
    let idle = allocations_during(|| {
        node.inlet.deliver(&p, None).expect("delivered");
    });
    let busy = allocations_during(|| {
        for _ in 0..100 {
            node.inlet.deliver(&p, None).expect("delivered");
        }
    });
    eprintln!(
        "fanout: allocations by Inlet::deliver to {RECIPIENTS} recipients: {idle} for the first \
         publication (idle queues: one queue buffer each), {:.1} per publication into busy \
         queues (100 more, no recipient draining: amortised queue growth included)",
        busy as f64 / 100.0
    );
}

fn fanout(c: &mut Criterion) {
    report_allocations();
    let mut group = c.benchmark_group("fanout_to_10000");
    group.throughput(Throughput::Elements(RECIPIENTS as u64));
    group.measurement_time(Duration::from_secs(8));
    group.sample_size(20);
    for workers in [1usize, 2] {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .expect("runtime");
        let (node, outboxes) = node();
        let taken = Arc::new(Taken {
            count: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            done: Notify::new(),
        });
        spawn_recipients(&rt, &outboxes, &taken);
        let node = Arc::new(node);
        group.bench_with_input(BenchmarkId::new("workers", workers), &workers, |b, _| {
            b.iter_custom(|iters| {
                let (node, taken) = (node.clone(), taken.clone());
                rt.block_on(async move {
                    // The publisher is a task on a worker, as an HTTP handler is.
                    tokio::spawn(async move {
                        let base = taken.count.load(Relaxed);
                        taken
                            .target
                            .store(base + iters * RECIPIENTS as u64, Relaxed);
                        let p = publication();
                        let start = Instant::now();
                        let done = taken.done.notified();
                        for _ in 0..iters {
                            node.inlet.deliver(&p, None).expect("delivered");
                            // Let the recipients run between publications, as they
                            // would between requests.
                            tokio::task::yield_now().await;
                        }
                        done.await;
                        start.elapsed()
                    })
                    .await
                    .expect("publisher")
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
