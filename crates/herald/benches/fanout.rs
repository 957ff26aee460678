//! Fan-out to 10,000 in-memory recipients on 1 and 2 threads (issue #11, "more cores
//! must never mean less"), three ways:
//! - `one_runtime/1`: everything on one tokio worker (herald pinned to one core);
//! - `one_runtime/2`: recipients and publisher on a two-worker multi-threaded runtime —
//!   how herald ran connections before `ws.workers`, kept as the reference;
//! - `workers/2`: herald's connection workers (`shard::Workers`, two threads, each
//!   recipient homed on one, wakes posted once per worker per publication), the
//!   publisher on the first worker, where an HTTP handler or a backend connection runs.
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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
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
use herald::shard::Workers;
use herald::wake::Resident;
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
fn node(home: impl Fn(usize) -> Option<Resident>) -> (Node, Vec<Arc<Outbox>>) {
    let mut cfg = Config::default();
    cfg.limits.connections_per_ip = RECIPIENTS * 2;
    let (hub, inlet) = Hub::new(&cfg, Arc::new(Metrics::default()));
    let mut registrations = Vec::with_capacity(RECIPIENTS);
    let mut outboxes = Vec::with_capacity(RECIPIENTS);
    for i in 0..RECIPIENTS {
        let user = UserId::from(format!("u{i}"));
        let outbox = Arc::new(Outbox::living_on(1 << 20, 1 << 30, home(i)));
        let identity = Identity {
            user: user.clone(),
            device: None,
            groups: vec![],
            admin: false,
            backend: false,
            expires_at: None,
            token: None,
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
        idempotency_key: None,
    }
}

/// Deliveries taken by the recipients, counted per group of recipients (one group per
/// thread: a counter shared by every recipient would itself cross cores 10,000 times a
/// publication, which no server does), and a wake-up for whoever waits for the totals.
struct Taken {
    groups: Vec<Group>,
    unfinished: AtomicUsize,
    done: Notify,
}

#[repr(align(128))]
struct Group {
    count: AtomicU64,
    target: AtomicU64,
    members: u64,
}

impl Taken {
    fn new(groups: usize) -> Taken {
        Taken {
            groups: (0..groups)
                .map(|g| Group {
                    count: AtomicU64::new(0),
                    target: AtomicU64::new(u64::MAX),
                    members: (0..RECIPIENTS).filter(|i| i % groups == g).count() as u64,
                })
                .collect(),
            unfinished: AtomicUsize::new(0),
            done: Notify::new(),
        }
    }

    /// Every group is to take `iters` more publications each.
    fn expect(&self, iters: u64) {
        self.unfinished.store(self.groups.len(), Relaxed);
        for g in &self.groups {
            g.target
                .store(g.count.load(Relaxed) + iters * g.members, Relaxed);
        }
    }

    fn took(&self, recipient: usize, n: u64) {
        let g = &self.groups[recipient % self.groups.len()];
        let total = g.count.fetch_add(n, Relaxed) + n;
        if total == g.target.load(Relaxed) && self.unfinished.fetch_sub(1, Relaxed) == 1 {
            self.done.notify_one();
        }
    }
}

/// One task per recipient, draining its outbox as a writer would (without a socket);
/// `spawn(i, task)` runs recipient `i`'s task where its connection would live.
fn spawn_recipients(
    outboxes: &[Arc<Outbox>],
    taken: &Arc<Taken>,
    spawn: impl Fn(usize, std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
) {
    for (i, outbox) in outboxes.iter().enumerate() {
        let (outbox, taken) = (outbox.clone(), taken.clone());
        spawn(
            i,
            Box::pin(async move {
                let (mut control, mut data) = (Vec::new(), Vec::new());
                loop {
                    let batch = outbox.next_batch(&mut control, &mut data).await;
                    taken.took(i, data.len() as u64);
                    control.clear();
                    data.clear();
                    if batch == Batch::Finish {
                        return;
                    }
                }
            }),
        );
    }
}

fn report_allocations() {
    let (node, _outboxes) = node(|_| None);
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
    for (how, threads) in [("one_runtime", 1usize), ("one_runtime", 2), ("workers", 2)] {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(if how == "workers" { 1 } else { threads })
            .enable_all()
            .build()
            .expect("runtime");
        let workers = (how == "workers").then(|| {
            let _main = rt.enter();
            Arc::new(Workers::start(threads).expect("workers"))
        });
        let (node, outboxes) = node(|i| {
            let w = workers.as_ref()?;
            w.get(i % threads).map(|w| w.join())
        });
        let taken = Arc::new(Taken::new(threads));
        spawn_recipients(&outboxes, &taken, |i, task| match &workers {
            Some(w) => w.get(i % threads).expect("a worker").spawn(task),
            None => drop(rt.spawn(task)),
        });
        let node = Arc::new(node);
        group.bench_with_input(BenchmarkId::new(how, threads), &threads, |b, _| {
            b.iter_custom(|iters| {
                let (node, taken) = (node.clone(), taken.clone());
                let publisher = async move {
                    taken.expect(iters);
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
                };
                // The publisher is a task where an HTTP handler runs: on a worker
                // (with herald's workers) or on the runtime.
                let (tx, rx) = std::sync::mpsc::channel();
                let task = Box::pin(async move {
                    let _ = tx.send(publisher.await);
                });
                match &workers {
                    Some(w) => w.get(0).expect("a worker").spawn(task),
                    None => drop(rt.spawn(task)),
                }
                rx.recv().expect("publisher")
            });
        });
        drop(outboxes);
        if let Some(w) = workers {
            w.stop();
        }
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
