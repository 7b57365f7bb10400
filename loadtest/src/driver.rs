//! The load loops: closed (a fixed number of calls always in flight) and open (calls at fixed
//! intended times, latency counted from them, so a stalled server cannot hide).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::scenario::{Outcome, Workload, execute};
use crate::stats::{Completed, Recorder};

/// How load is generated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// `concurrency` workers, each sending its next call when the previous one answers.
    Closed {
        /// Calls in flight at all times.
        concurrency: u32,
    },
    /// `rate` calls per second at fixed intended times, whatever the server does.
    Open {
        /// Calls per second.
        rate: f64,
        /// Calls in flight at most; a call due while this many are in flight is dropped.
        max_in_flight: u64,
    },
}

/// The run's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// When load starts.
    pub start: Instant,
    /// When the warmup ends and measuring starts.
    pub measure_from: Instant,
    /// When no further call is started.
    pub end: Instant,
}

impl Plan {
    /// A plan starting at `start`.
    pub fn new(start: Instant, warmup: Duration, duration: Duration) -> Self {
        let measure_from = start + warmup;
        Self {
            start,
            measure_from,
            end: measure_from + duration,
        }
    }
}

/// The open loop's intended send times: call `i` is due at `start + i / rate`, computed from
/// `i` directly so rounding never accumulates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// When call 0 is due.
    start: Instant,
    /// Nanoseconds between two calls.
    interval_nanos: f64,
}

impl Schedule {
    /// `rate` calls per second from `start`.
    pub fn new(start: Instant, rate: f64) -> Self {
        Self {
            start,
            interval_nanos: 1e9 / rate,
        }
    }

    /// When call `i` is due.
    pub fn intended(&self, i: u64) -> Instant {
        // f64 holds i × interval exactly enough: even after 10⁹ calls the error is < 1 µs.
        self.start + Duration::from_nanos((i as f64 * self.interval_nanos).round() as u64)
    }
}

/// Live counters for the progress line, shared by all executors.
#[derive(Debug, Default)]
pub struct Counters {
    /// Calls completed.
    pub completed: AtomicU64,
    /// Calls that ended with an error status.
    pub errors: AtomicU64,
    /// Open loop: calls not sent because `max_in_flight` calls were in flight.
    pub dropped: AtomicU64,
    /// Open loop: calls sent and not yet answered.
    pub in_flight: AtomicU64,
}

/// A request to stop early (Ctrl-C).
#[derive(Debug, Default)]
pub struct Stop {
    /// Set once stopping.
    flag: AtomicBool,
    /// When the stop was requested: the measured period ends there.
    at: OnceLock<Instant>,
}

impl Stop {
    /// Asks every loop to start no further calls.
    pub fn request(&self) {
        let _ = self.at.set(Instant::now());
        self.flag.store(true, Ordering::Relaxed);
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// When the stop was requested, if it was.
    pub fn at(&self) -> Option<Instant> {
        self.at.get().copied()
    }
}

/// What every executor needs.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Builds the requests.
    pub workload: Arc<Workload>,
    /// Every connection, targets interleaved (t0c0, t1c0, …, t0c1, …), so taking them in turn
    /// goes round-robin over targets and then connections.
    pub channels: Arc<[Channel]>,
    /// Per-call deadline.
    pub timeout: Duration,
    /// Base seed; executor `i` uses a seed derived from it and `i`.
    pub seed: u64,
    /// Whether to keep the per-key ledger.
    pub correctness: bool,
    /// Live counters.
    pub counters: Arc<Counters>,
    /// Early stop.
    pub stop: Arc<Stop>,
}

/// What a run produced.
#[derive(Debug)]
pub struct Output {
    /// Every executor's recorder, merged.
    pub recorder: Recorder,
    /// Open loop: calls due in the measured period that were dropped (the warmup's are only
    /// in [`Counters::dropped`]).
    pub dropped: u64,
}

/// An executor task ended abnormally (a bug: it does not panic by design).
#[derive(Debug, thiserror::Error)]
#[error("a load executor failed: {0}")]
pub struct DriverError(String);

/// Executor tasks: two per core, so decoding spreads over the runtime's threads.
fn executor_count() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get() * 2)
}

/// One task's share of the load, with its own random generator and recorder.
struct Executor {
    /// Builds the requests.
    workload: Arc<Workload>,
    /// The connections.
    channels: Arc<[Channel]>,
    /// The connection the next call uses.
    next_channel: usize,
    /// This executor's generator (seeded from the run's seed).
    rng: Xoshiro256PlusPlus,
    /// Per-call deadline.
    timeout: Duration,
    /// What this executor saw.
    recorder: Recorder,
    /// Live counters.
    counters: Arc<Counters>,
}

impl Executor {
    /// Executor `id` of `count`.
    fn new(setup: &Setup, plan: &Plan, id: usize, count: usize) -> Self {
        let seed = setup.seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Self {
            workload: Arc::clone(&setup.workload),
            channels: Arc::clone(&setup.channels),
            next_channel: id * setup.channels.len() / count.max(1),
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            timeout: setup.timeout,
            recorder: Recorder::new(plan.measure_from, setup.correctness),
            counters: Arc::clone(&setup.counters),
        }
    }

    /// Builds the next call, due at `intended`; the future sends it when first polled.
    fn start(&mut self, intended: Instant) -> impl Future<Output = Completed> + use<> {
        let call = self.workload.next_call(&mut self.rng);
        let channel = self.channels[self.next_channel % self.channels.len()].clone();
        self.next_channel = (self.next_channel + 1) % self.channels.len();
        let timeout = self.timeout;
        let expected = self.workload.expected_policy;
        let (scenario, key) = (call.scenario, call.key);
        async move {
            let sent = Instant::now();
            let outcome = execute(call, channel, timeout, expected).await;
            Completed {
                scenario,
                key,
                intended,
                sent,
                received: Instant::now(),
                outcome,
            }
        }
    }

    /// Records a finished call.
    fn finish(&mut self, done: &Completed) {
        self.recorder.record(done);
        self.counters.completed.fetch_add(1, Ordering::Relaxed);
        if matches!(done.outcome, Outcome::Error(_)) {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs the load and returns what was recorded.
pub async fn run(setup: Setup, mode: Mode, plan: Plan) -> Result<Output, DriverError> {
    match mode {
        Mode::Closed { concurrency } => run_closed(setup, concurrency, plan).await,
        Mode::Open {
            rate,
            max_in_flight,
        } => run_open(setup, rate, max_in_flight, plan).await,
    }
}

/// The closed loop: `concurrency` call loops spread over the executors.
async fn run_closed(setup: Setup, concurrency: u32, plan: Plan) -> Result<Output, DriverError> {
    let count = executor_count().min(concurrency as usize).max(1);
    let mut tasks = Vec::with_capacity(count);
    for id in 0..count {
        // Spread the loops evenly: the first `concurrency % count` executors get one more.
        let loops = concurrency as usize / count + usize::from(id < concurrency as usize % count);
        let executor = Executor::new(&setup, &plan, id, count);
        let stop = Arc::clone(&setup.stop);
        tasks.push(tokio::spawn(closed_executor(
            executor, loops, plan.end, stop,
        )));
    }
    let recorder = join(tasks, &plan, setup.correctness).await?;
    Ok(Output {
        recorder,
        dropped: 0,
    })
}

/// `loops` calls in flight until `end`; each answer starts the next call.
async fn closed_executor(
    mut ex: Executor,
    loops: usize,
    end: Instant,
    stop: Arc<Stop>,
) -> Recorder {
    let go_on = || Instant::now() < end && !stop.requested();
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..loops {
        if go_on() {
            in_flight.push(ex.start(Instant::now()));
        }
    }
    while let Some(done) = in_flight.next().await {
        ex.finish(&done);
        if go_on() {
            in_flight.push(ex.start(Instant::now()));
        }
    }
    ex.recorder
}

/// The open loop: a scheduler thread hands intended times to the executors in turn.
async fn run_open(
    setup: Setup,
    rate: f64,
    max_in_flight: u64,
    plan: Plan,
) -> Result<Output, DriverError> {
    let count = executor_count();
    let mut senders = Vec::with_capacity(count);
    let mut tasks = Vec::with_capacity(count);
    for id in 0..count {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        let executor = Executor::new(&setup, &plan, id, count);
        tasks.push(tokio::spawn(open_executor(executor, rx)));
    }
    let schedule = Schedule::new(plan.start, rate);
    let counters = Arc::clone(&setup.counters);
    let stop = Arc::clone(&setup.stop);
    // A thread of its own: std's sleep wakes within tens of microseconds, where tokio's timer
    // rounds up to the next millisecond, which would add up to 1 ms to every latency.
    let scheduler = tokio::task::spawn_blocking(move || {
        schedule_calls(&schedule, &plan, &senders, max_in_flight, &counters, &stop)
    });
    let dropped = scheduler.await.map_err(|e| DriverError(e.to_string()))?;
    let recorder = join(tasks, &plan, setup.correctness).await?;
    Ok(Output { recorder, dropped })
}

/// Sends each due time to an executor, or drops the call when too many are in flight.
/// Returns the calls dropped in the measured period. Dropping `senders` on return ends the
/// executors once their calls are answered.
fn schedule_calls(
    schedule: &Schedule,
    plan: &Plan,
    senders: &[mpsc::UnboundedSender<Instant>],
    max_in_flight: u64,
    counters: &Counters,
    stop: &Stop,
) -> u64 {
    let mut dropped = 0;
    for i in 0.. {
        let intended = schedule.intended(i);
        if intended >= plan.end {
            break;
        }
        // Sleep in slices so a stop is noticed even at very low rates.
        loop {
            if stop.requested() {
                return dropped;
            }
            let now = Instant::now();
            if now >= intended {
                break;
            }
            std::thread::sleep((intended - now).min(Duration::from_millis(50)));
        }
        // Counted in flight before it is handed over, so the executor's decrement can never
        // come first (the count would wrap and drop calls).
        let sent = counters.in_flight.load(Ordering::Relaxed) < max_in_flight && {
            counters.in_flight.fetch_add(1, Ordering::Relaxed);
            let executor = &senders[(i % senders.len() as u64) as usize];
            let handed_over = executor.send(intended).is_ok();
            if !handed_over {
                // Only if the executor task died; the call is dropped instead.
                counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            handed_over
        };
        if !sent {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            if intended >= plan.measure_from {
                dropped += 1;
            }
        }
    }
    dropped
}

/// Starts each received intended time at once and records answers, until the scheduler is
/// done and every call has answered.
async fn open_executor(mut ex: Executor, mut due: mpsc::UnboundedReceiver<Instant>) -> Recorder {
    let mut in_flight = FuturesUnordered::new();
    let mut scheduling = true;
    loop {
        tokio::select! {
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                ex.finish(&done);
                ex.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            intended = due.recv(), if scheduling => match intended {
                Some(intended) => in_flight.push(ex.start(intended)),
                None => scheduling = false,
            },
            else => break,
        }
    }
    ex.recorder
}

/// Waits for the executors and merges their recorders.
async fn join(
    tasks: Vec<tokio::task::JoinHandle<Recorder>>,
    plan: &Plan,
    correctness: bool,
) -> Result<Recorder, DriverError> {
    let mut merged = Recorder::new(plan.measure_from, correctness);
    for task in tasks {
        merged.merge(task.await.map_err(|e| DriverError(e.to_string()))?);
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyspace::{KeySpace, Shape};
    use crate::scenario::{Mix, ScenarioKind};
    use crate::stats::LatencySummary;
    use portcullis_client::pb;
    use portcullis_client::pb::rate_limit_service_server::{
        RateLimitService, RateLimitServiceServer,
    };

    #[test]
    fn intended_times_are_evenly_spaced() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 3000.0);
        assert_eq!(s.intended(0), t0);
        // 1/3000 s = 333,333.33 ns: gaps are 333,333 or 333,334 ns, never drifting.
        for i in 0..10_000 {
            let gap = s.intended(i + 1) - s.intended(i);
            assert!(
                (333_333..=333_334).contains(&gap.as_nanos()),
                "gap {i}: {gap:?}"
            );
        }
        assert_eq!(s.intended(3000), t0 + Duration::from_secs(1));
        assert_eq!(s.intended(30_000), t0 + Duration::from_secs(10));
        let slow = Schedule::new(t0, 0.5);
        assert_eq!(slow.intended(3), t0 + Duration::from_secs(6));
    }

    #[test]
    fn plan_puts_measuring_after_warmup() {
        let t0 = Instant::now();
        let p = Plan::new(t0, Duration::from_secs(5), Duration::from_secs(30));
        assert_eq!(p.measure_from - p.start, Duration::from_secs(5));
        assert_eq!(p.end - p.start, Duration::from_secs(35));
    }

    /// A Check server that answers after `delay`, and holds every call during a stall window.
    struct SlowServer {
        /// Time of each answer.
        delay: Duration,
        /// Calls arriving in [from, until) wait until `until`.
        stall: Option<(Instant, Instant)>,
    }

    #[tonic::async_trait]
    impl RateLimitService for SlowServer {
        async fn check(
            &self,
            _: tonic::Request<pb::CheckRequest>,
        ) -> Result<tonic::Response<pb::CheckResponse>, tonic::Status> {
            if let Some((from, until)) = self.stall {
                let now = Instant::now();
                if now >= from && now < until {
                    tokio::time::sleep(until - now).await;
                }
            }
            tokio::time::sleep(self.delay).await;
            Ok(tonic::Response::new(pb::CheckResponse {
                allowed: true,
                ..Default::default()
            }))
        }

        async fn check_many(
            &self,
            _: tonic::Request<pb::CheckManyRequest>,
        ) -> Result<tonic::Response<pb::CheckManyResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented(
                "the load driver sends Check only",
            ))
        }
    }

    /// Serves `server` on a free loopback port and returns a channel to it.
    async fn serve(server: SlowServer) -> Channel {
        let incoming =
            tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = incoming.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RateLimitServiceServer::new(server))
                .serve_with_incoming(incoming),
        );
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    fn setup(channel: Channel) -> Setup {
        Setup {
            workload: Arc::new(Workload {
                mix: Mix::single(ScenarioKind::Check),
                keyspace: KeySpace::new(2, 10, Shape::Uniform).unwrap(),
                tenant_names: vec!["t0".into(), "t1".into()],
                key_names: (0..10).map(|k| format!("k{k}")).collect(),
                resource: String::new(),
                envoy: None,
                tokens: Vec::new(),
                login: None,
                expected_policy: None,
            }),
            channels: vec![channel].into(),
            timeout: Duration::from_secs(2),
            seed: 1,
            correctness: false,
            counters: Arc::default(),
            stop: Arc::default(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_shows_a_stall_in_the_latency_and_sends_every_call() {
        let t0 = Instant::now() + Duration::from_millis(200);
        let stall = (
            t0 + Duration::from_millis(300),
            t0 + Duration::from_millis(600),
        );
        let channel = serve(SlowServer {
            delay: Duration::from_millis(1),
            stall: Some(stall),
        })
        .await;
        let plan = Plan::new(t0, Duration::ZERO, Duration::from_secs(1));
        let mode = Mode::Open {
            rate: 200.0,
            max_in_flight: 10_000,
        };
        let out = run(setup(channel), mode, plan).await.unwrap();
        let total = out.recorder.total();
        // Exactly the 200 scheduled calls, none dropped despite the stall.
        assert_eq!(total.counts.requests, 200);
        assert_eq!(out.dropped, 0);
        // ~60 calls were due during the 300 ms stall, waiting from 300 ms down to 0 ms:
        // 10 % of all calls waited more than 150 ms.
        let l = LatencySummary::of(&total.latency).unwrap();
        assert!(l.max >= 280_000, "{l:?}");
        assert!(l.p90 >= 100_000, "{l:?}");
        assert!(l.p50 < 100_000, "{l:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_drops_calls_beyond_max_in_flight() {
        let t0 = Instant::now() + Duration::from_millis(200);
        let stall = (
            t0 + Duration::from_millis(300),
            t0 + Duration::from_millis(600),
        );
        let channel = serve(SlowServer {
            delay: Duration::from_millis(1),
            stall: Some(stall),
        })
        .await;
        let plan = Plan::new(t0, Duration::from_millis(100), Duration::from_millis(900));
        let mode = Mode::Open {
            rate: 200.0,
            max_in_flight: 5,
        };
        let s = setup(channel);
        let counters = Arc::clone(&s.counters);
        let out = run(s, mode, plan).await.unwrap();
        let total = out.recorder.total();
        // 20 calls due in the warmup, 180 measured, each either sent or dropped; during the
        // 300 ms stall only 5 fit in flight, so about 55 are dropped.
        let dropped_in_warmup = counters.dropped.load(Ordering::Relaxed) - out.dropped;
        assert_eq!(out.recorder.warmup_requests() + dropped_in_warmup, 20);
        assert_eq!(total.counts.requests + out.dropped, 180);
        assert!(out.dropped >= 45, "dropped {}", out.dropped);
        assert_eq!(counters.in_flight.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_send_counts_from_the_intended_time() {
        let channel = serve(SlowServer {
            delay: Duration::from_millis(1),
            stall: None,
        })
        .await;
        let now = Instant::now();
        let start = now.checked_sub(Duration::from_secs(1)).unwrap();
        let plan = Plan::new(start, Duration::ZERO, Duration::from_secs(2));
        let mut ex = Executor::new(&setup(channel), &plan, 0, 1);
        // The schedule wanted this call 80 ms ago (the generator fell behind).
        let intended = now.checked_sub(Duration::from_millis(80)).unwrap();
        let done = ex.start(intended).await;
        assert_eq!(done.intended, intended);
        assert!(done.sent >= now);
        ex.finish(&done);
        let stats = ex.recorder.total();
        let latency = LatencySummary::of(&stats.latency).unwrap();
        let service = LatencySummary::of(&stats.service_time).unwrap();
        assert!(latency.max >= 80_000, "{latency:?}");
        assert!(service.max < 80_000, "{service:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_loop_keeps_concurrency_calls_in_flight() {
        let channel = serve(SlowServer {
            delay: Duration::from_millis(20),
            stall: None,
        })
        .await;
        let plan = Plan::new(Instant::now(), Duration::ZERO, Duration::from_millis(500));
        let out = run(setup(channel), Mode::Closed { concurrency: 4 }, plan)
            .await
            .unwrap();
        let total = out.recorder.total();
        // 4 loops × 500 ms / (20 ms + overhead) ≈ 90-100 calls, at most 100; one loop could
        // make at most 25 (the lower bound leaves room for a busy machine).
        let n = total.counts.requests;
        assert!((40..=100).contains(&n), "{n} calls");
        assert_eq!(total.counts.allowed, n);
        let l = LatencySummary::of(&total.latency).unwrap();
        assert!(l.p50 >= 20_000, "{l:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_ends_the_run_early() {
        let channel = serve(SlowServer {
            delay: Duration::from_millis(1),
            stall: None,
        })
        .await;
        let s = setup(channel);
        let stop = Arc::clone(&s.stop);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            stop.request();
        });
        let begun = Instant::now();
        let plan = Plan::new(begun, Duration::ZERO, Duration::from_secs(30));
        let mode = Mode::Open {
            rate: 100.0,
            max_in_flight: 100,
        };
        let out = run(s, mode, plan).await.unwrap();
        assert!(begun.elapsed() < Duration::from_secs(2));
        let n = out.recorder.total().counts.requests;
        // ~20 calls were due in the 200 ms before the stop, none after it.
        assert!((10..=40).contains(&n), "{n} calls in 200 ms at 100/s");
    }
}
